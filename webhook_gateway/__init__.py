"""The webhook gateway: signed PeopleForce deliveries in, inbox rows out (see `app`)."""

from webhook_gateway.app import GatewayConfigError, create_app
from webhook_gateway.envelope import NotAnEnvelope, classify, parse_envelope
from webhook_gateway.server import create_server, serve

__all__ = [
    "GatewayConfigError",
    "NotAnEnvelope",
    "classify",
    "create_app",
    "create_server",
    "parse_envelope",
    "serve",
]
