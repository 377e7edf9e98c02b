"""Each provider's health, and the rules that fail over and back (pure functions).

A provider is **down** after ``fail_after`` failed checks in a row, or at once when the
circuit breaker trips (a burst of transient send failures, refused credentials). A down
provider comes back only after passing every check for ``failback_s``: a relay that flaps
does not drag traffic back and forth. The chain sends through the first provider that is
not down, in the configured order; with ``failback_ramp_s``, a provider just back takes a
growing share of the batches first (none at its return, all after the ramp), so a relay
that passes its checks but buckles under full traffic trips the breaker on a share.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    check_interval_s: float = 30.0
    fail_after: int = 3  # failed checks in a row
    failback_s: float = 300.0  # passing checks for this long before a provider is used again
    breaker_failures: int = 5  # transient send failures within breaker_window_s trip it
    breaker_window_s: float = 10.0
    check_timeout_s: float = 10.0
    failback_ramp_s: float = 0.0  # a provider back takes all traffic at once (0) or over this

    @property
    def lease_s(self) -> float:
        """How long the checker's lease lasts: a dead checker is replaced within two checks."""
        return 2 * self.check_interval_s + self.check_timeout_s


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    name: str
    down: bool = False
    failures: int = 0  # failed checks in a row
    last_check: float | None = None  # epoch seconds
    healthy_since: float | None = None  # first check of the current run of passing ones
    reason: str = ""  # the last failure, addresses masked
    credentials_refused: bool = False
    changed_at: float | None = None  # when ``down`` last flipped

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ProviderHealth:
        data: dict[str, Any] = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def after_check(
    health: ProviderHealth,
    ok: bool,
    at: float,
    policy: FailoverPolicy,
    reason: str = "",
    credentials_refused: bool = False,
) -> ProviderHealth:
    if ok:
        since = health.healthy_since if health.healthy_since is not None else at
        back = health.down and at - since >= policy.failback_s
        return replace(
            health,
            down=health.down and not back,
            failures=0,
            last_check=at,
            healthy_since=since,
            credentials_refused=False if back else health.credentials_refused,
            changed_at=at if back else health.changed_at,
        )
    failures = health.failures + 1
    down = health.down or failures >= policy.fail_after or credentials_refused
    return replace(
        health,
        down=down,
        failures=failures,
        last_check=at,
        healthy_since=None,
        reason=reason,
        credentials_refused=credentials_refused or health.credentials_refused,
        changed_at=at if down and not health.down else health.changed_at,
    )


def after_trip(
    health: ProviderHealth, at: float, reason: str, credentials_refused: bool = False
) -> ProviderHealth:
    """The breaker tripped: down now, and the failback period starts over."""
    return replace(
        health,
        down=True,
        healthy_since=None,
        reason=reason,
        credentials_refused=credentials_refused or health.credentials_refused,
        changed_at=health.changed_at if health.down else at,
    )


def send_order(
    names: Sequence[str],
    health: Mapping[str, ProviderHealth],
    at: float | None = None,
    ramp_s: float = 0.0,
    draw: Callable[[], float] = random.random,
) -> list[int]:
    """Indices of the providers to try, in order: those not down. When every one is down,
    all of them (the primary first): trying beats holding all mail back.

    With ``ramp_s`` (and ``at``, now): a first provider that came back less than
    ``ramp_s`` ago goes first for a share of the calls growing from 0 to 1 over the ramp,
    and second for the rest."""
    usable = [i for i, name in enumerate(names) if not _down(health, name)]
    if not usable:
        return list(range(len(names)))
    first = health.get(names[usable[0]])
    if at is None or first is None or first.changed_at is None or len(usable) < 2:
        return usable
    back_for = max(0.0, at - first.changed_at)
    if back_for < ramp_s and draw() >= back_for / ramp_s:  # not its turn yet
        usable[0], usable[1] = usable[1], usable[0]
    return usable


def state_label(index: int, name: str, names: Sequence[str], health: Mapping[str, ProviderHealth]
                ) -> str:  # fmt: skip
    """What ``emailq providers`` shows: active, standby, down or recovering."""
    record = health.get(name)
    if record is not None and record.down:
        return "recovering" if record.healthy_since is not None else "down"
    return "active" if send_order(names, health)[0] == index else "standby"


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """One line of ``emailq providers`` and of ``GET /v1/providers``."""

    name: str
    state: str  # active, standby, down, recovering
    last_check: float | None
    failures: int
    reason: str
    credentials_refused: bool


def statuses(names: Sequence[str], health: Mapping[str, ProviderHealth]) -> list[ProviderStatus]:
    out = []
    for index, name in enumerate(names):
        record = health.get(name) or ProviderHealth(name)
        out.append(ProviderStatus(
            name, state_label(index, name, names, health), record.last_check,
            record.failures, record.reason, record.credentials_refused,
        ))  # fmt: skip
    return out


def _down(health: Mapping[str, ProviderHealth], name: str) -> bool:
    record = health.get(name)
    return record is not None and record.down
