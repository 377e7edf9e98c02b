"""From a validated email to a queue message: how long it is retried, and how many times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emailq.deployment import Deployment
from emailq.errors import InvalidEmail
from emailq.intake import to_new_message
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.settings import Settings

EMAIL = {"from": "planner@weddings.example", "to": "guest@example.org",
         "subject": "Ceremony moved to 16:30", "text": "See you there."}  # fmt: skip
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def test_an_emails_expiry_and_attempts_reach_the_queue() -> None:
    email = parse_email(EMAIL | {"expires_at": "2030-06-01T16:00:00+02:00", "max_attempts": 3})
    message = to_new_message(email, NOW)
    assert (message.expires_at, message.max_attempts) == ((NOW + timedelta(hours=2)).timestamp(), 3)
    plain = to_new_message(parse_email(EMAIL), NOW)
    assert (plain.expires_at, plain.max_attempts) == (None, None)  # the lane's age, no count


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"send_at": "2030-06-02T10:00:00Z", "expires_at": "2030-06-02T09:00:00Z"}, "expires_at"),
        ({"send_at": "2030-06-02T10:00:00Z", "expires_at": "2030-06-02T10:00:00Z"}, "expires_at"),
        ({"expires_at": "2030-06-02T10:00:00"}, "expires_at"),  # no offset: which 10:00?
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1001}, "max_attempts"),
    ],
)
def test_a_bad_expiry_or_attempt_count_names_its_field(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidEmail) as invalid:
        parse_email(EMAIL | fields)
    assert [error.field for error in invalid.value.errors] == [field]


def test_a_deployment_expires_each_lanes_mail_after_its_configured_age(tmp_path: Path) -> None:
    settings = Settings(broker={"url": f"sqlite:///{tmp_path}/q.db", "max_age_bulk_s": 3600})
    with Deployment(settings) as deployment:
        newsletter = EMAIL | {"wedding": {"wedding_id": "w1", "kind": "newsletter",
                                          "ceremony_at": "2030-06-13T16:00:00+02:00"}}  # fmt: skip
        queued = deployment.send(newsletter)
        info = deployment.broker.get(queued.id)
        assert info is not None and info.lane == Lane.BULK
        assert info.expires_at == pytest.approx(info.enqueued_at + 3600)
        own = deployment.send(EMAIL | {"expires_at": "2099-01-01T00:00:00Z"})
        assert deployment.broker.get(own.id).expires_at == 4070908800  # type: ignore[union-attr]
