"""Ids in a PeopleForce webhook are read strictly: never coerced with `int()`."""

from __future__ import annotations

import pytest

from core.peopleforce import WebhookEnvelope
from core.peopleforce.models import strict_id


@pytest.mark.parametrize("value", [True, 3.7, 12.0, " 12", "9_10_015", "", "١٢", None, [1]])
def test_an_employee_id_in_a_webhook_is_never_coerced(value: object) -> None:
    with pytest.raises(ValueError, match="a JSON integer or a string of digits"):
        strict_id(value)
    position = WebhookEnvelope.model_validate(
        {"action": "employee_position_create", "data": {"attributes": {"employee_id": value}}}
    )
    if value is None:
        assert position.employee_id is None
    else:
        with pytest.raises(ValueError, match="a JSON integer or a string of digits"):
            _ = position.employee_id


def test_an_employee_id_is_a_json_integer_or_a_string_of_digits() -> None:
    assert strict_id(1041) == strict_id("1041") == strict_id("001041") == 1041


@pytest.mark.parametrize("value", [True, 1.0, "12"])
def test_data_id_is_a_json_integer(value: object) -> None:
    with pytest.raises(ValueError, match="JSON integer"):
        WebhookEnvelope.model_validate({"action": "employee_update", "data": {"id": value}})
