"""PeopleForce: the API client, its record and webhook models, and webhook signatures."""

from core.peopleforce.client import PeopleForceClient, parse_error_body
from core.peopleforce.models import (
    Asset,
    Employee,
    EmployeeSummary,
    WebhookEnvelope,
)
from core.peopleforce.signature import SIGNATURE_HEADER, sign, verify

__all__ = [
    "SIGNATURE_HEADER",
    "Asset",
    "Employee",
    "EmployeeSummary",
    "PeopleForceClient",
    "WebhookEnvelope",
    "parse_error_body",
    "sign",
    "verify",
]
