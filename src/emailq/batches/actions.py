"""Cancelling and retrying what is left of a batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from emailq.batches.status import RETRY_KEY_PREFIX, BatchView
from emailq.broker import Broker, NewMessage, State
from emailq.message import Email

CANCELLABLE = (State.QUEUED, State.SCHEDULED, State.RETRYING)


@dataclass(frozen=True, slots=True)
class Cancelled:
    cancelled: list[str]
    not_cancelled: int  # leased (a worker holds it) or already final


def cancel(broker: Broker, view: BatchView) -> Cancelled:
    """Cancel every message of the batch no worker holds yet, in one broker call."""
    waiting = [m.info.id for m in view.current if m.info.state in CANCELLABLE]
    done = broker.cancel_many(waiting)
    live = [m for m in view.current if m.info.state not in (State.SENT, State.DEAD)]
    return Cancelled(done, len(live) - len(done))


@dataclass(frozen=True, slots=True)
class Retried:
    ids: dict[str, str]  # dead message id → its new message's id
    without_body: list[str]  # dead, but their body is gone (privacy.dead_body_retention_s)


def retry_dead(
    broker: Broker,
    batch_id: str,
    view: BatchView,
    to_message: Callable[[Email], NewMessage],
) -> Retried:
    """One new message per dead recipient (only those), in the same batch, with fresh
    attempts and expiry. Its idempotency key names the dead one: a repeat queues nothing."""
    dead = view.dead()
    sources = [(m.info.id, m.payload) for m in dead if m.payload is not None]
    messages = []
    for dead_id, payload in sources:
        email = Email.from_payload(payload)
        fresh = email.model_copy(
            update={"idempotency_key": None, "send_at": None, "expires_at": None}
        )
        message = to_message(fresh)
        messages.append(
            replace(message, idempotency_key=f"{RETRY_KEY_PREFIX}{dead_id}", batch_id=batch_id)
        )
    new_ids = broker.enqueue_many(messages)
    return Retried(
        ids={dead_id: new for (dead_id, _), new in zip(sources, new_ids, strict=True)},
        without_body=[m.info.id for m in dead if m.payload is None],
    )
