"""Retrying like an MTA: how long each lane's mail is worth trying, and when a retry, a
deferral or a lapsed lease buries a message instead, in which words.

The SQLite broker calls these functions; the Redis scripts take the same steps in Lua
(settle.lua, reap.lua, lease.lua), and the contract tests hold both backends to the same
answers and the same words. Times are epoch seconds on the broker's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from emailq.lanes import Lane

DAY = 24 * 3600.0
# How long each lane's mail is worth trying, as an MTA's queue lifetime: a ceremony change
# a day late is worse than none; a newsletter may wait out a provider's weekend outage.
DEFAULT_MAX_AGE: dict[Lane, float] = {
    Lane.CRITICAL: 1 * DAY,
    Lane.WEDDING_DAY: 2 * DAY,
    Lane.PRE_WEDDING: 5 * DAY,
    Lane.STANDARD: 5 * DAY,
    Lane.BULK: 5 * DAY,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Tried:
    """What the broker knows of a leased message when it is settled or reaped."""

    attempts: int  # including the one just made
    max_attempts: int | None  # None: no limit by count
    enqueued_at: float
    expires_at: float | None  # None: never (stored before messages expired)
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Next:
    """What becomes of it: buried or not, its attempts, its last error."""

    dead: bool
    attempts: int
    error: str | None


def after_retry(message: Tried, due: float, at: float, error: str | None) -> Next:
    """A failed try: again at ``due``, unless that is at or past its expiry or its explicit
    attempts are spent."""
    if _spent(message) or _late(message, due):
        age = at - message.enqueued_at
        return Next(True, message.attempts, gave_up(message.attempts, age, error))
    return Next(False, message.attempts, error)


def after_deferral(message: Tried, due: float, error: str | None) -> Next:
    """Not tried: the attempt is given back, ``error`` (else the last one) kept; buried only
    when ``due`` is at or past its expiry, never for its count."""
    error = error or message.last_error
    if _late(message, due):
        return Next(True, message.attempts - 1, expired(error))
    return Next(False, message.attempts - 1, error)


def after_lapse(message: Tried, at: float) -> str | None:
    """A lease that ran out (its worker died or stalled): the burial's error when it is past
    its expiry or its explicit attempts are spent, else None (it goes back to its lane)."""
    if _spent(message) or _late(message, at):
        why = f"lease expired on attempt {message.attempts}"
        return gave_up(message.attempts, at - message.enqueued_at, why)
    return None


def _spent(message: Tried) -> bool:
    return message.max_attempts is not None and message.attempts >= message.max_attempts


def _late(message: Tried, when: float) -> bool:
    return message.expires_at is not None and when >= message.expires_at


def span(seconds: float) -> str:
    """A duration for people."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / DAY:.1f} days"


def gave_up(attempts: int, seconds: float, error: str | None) -> str:
    """The error of a message buried by a retry or the reaper."""
    text = f"gave up after {attempts} attempt{'' if attempts == 1 else 's'} over {span(seconds)}"
    return f"{text}: {error}" if error else text


def expired(last_error: str | None) -> str:
    """The error of a message that reached its expires_at before it could be sent."""
    text = "expired before it could be sent"
    return f"{text}; last error: {last_error}" if last_error else text
