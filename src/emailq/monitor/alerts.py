"""Evaluating alert rules over the history: pending → firing → resolved, with hysteresis,
a ``for`` duration, a repeat interval while firing, and silences.

:class:`Alerts` is pure: given the recent snapshots and the time it answers which notices
are due; the runner sends them and stores the states in the broker, so a monitor taking
over from another goes on where it stopped instead of noticing everything again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from emailq.monitor.recorder import Tally
from emailq.monitor.rules import Rule
from emailq.monitor.snapshot import Snapshot


@dataclass
class AlertState:
    state: str = "inactive"  # inactive | pending | firing
    since: float = 0.0  # when it entered the state
    value: float | None = None
    notified_at: float = 0.0  # the last notice sent for it (firing or repeat)


@dataclass(frozen=True, slots=True)
class Notice:
    rule: str
    status: str  # firing | resolved | repeat
    severity: str
    summary: str
    metric: str
    lanes: tuple[str, ...]
    value: float | None
    threshold: float
    op: str
    at: float
    since: float
    labels: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["labels"] = dict(self.labels)
        body["lanes"] = list(self.lanes)
        return body


def metric_value(rule: Rule, window: Sequence[Snapshot], worker_stale_s: float) -> float | None:
    """The rule's metric over its lanes and the snapshots of its window (the latest last)."""
    latest = window[-1]
    lanes = rule.lanes or None
    metric = rule.metric
    if metric == "queue_depth":
        return float(latest.backlog(lanes))
    if metric == "queued":
        return float(latest.queued(lanes))
    if metric == "oldest_age_s":
        names = lanes or list(latest.lanes)
        return max((latest.lanes[x].oldest_age for x in names if x in latest.lanes), default=0.0)
    if metric == "workers_alive":
        return float(latest.workers_alive(worker_stale_s))
    if metric == "providers_down":
        return float(sum(1 for healthy in latest.provider_health.values() if not healthy))
    total = Tally()
    for snapshot in window:
        total.merge(snapshot.lane_tally(lanes))
    elapsed = sum(snapshot.elapsed_s for snapshot in window)
    if metric == "throughput_per_min":
        return total.sent * 60 / elapsed if elapsed > 0 else None
    if metric == "success_rate":
        return total.sent / total.attempts if total.attempts else None
    if metric == "dead":
        return float(total.failed)
    quantile = {"p50_s": 0.50, "p95_s": 0.95, "p99_s": 0.99}[metric]
    return total.latency.quantile(quantile)


class Alerts:
    def __init__(self, rules: Sequence[Rule], worker_stale_s: float) -> None:
        self.rules = tuple(rules)
        self.worker_stale_s = worker_stale_s
        self.states: dict[str, AlertState] = {rule.name: AlertState() for rule in self.rules}

    def evaluate(self, history: Sequence[Snapshot], at: float) -> list[Notice]:
        """Advance every rule to ``at``; the notices due (the caller holds back silenced
        rules' notices: the state moves on all the same)."""
        notices = []
        for rule in self.rules:
            window = [s for s in history if s.at > at - max(rule.window_s, 1e-9)] or [history[-1]]
            guarded = rule.when == "queued" and window[-1].queued(rule.lanes or None) == 0
            value = None if guarded else metric_value(rule, window, self.worker_stale_s)
            notice = self._advance(rule, self.states[rule.name], value, at)
            if notice is not None:
                notices.append(notice)
        return notices

    def _advance(
        self, rule: Rule, state: AlertState, value: float | None, at: float
    ) -> Notice | None:
        # No value (no traffic, or its condition does not hold) never breaches: a firing
        # alert then resolves, as it would when the value recovers.
        breaching = value is not None and rule.breaches(value)
        state.value = value
        if state.state == "inactive" and breaching:
            state.state, state.since = "pending", at
        if state.state == "pending":
            if not breaching:
                state.state, state.since = "inactive", at
            elif at - state.since >= rule.for_s:
                state.state, state.since, state.notified_at = "firing", at, at
                return self._notice(rule, state, "firing", at)
            return None
        if state.state == "firing":
            if value is None or rule.recovered(value):
                notice = self._notice(rule, state, "resolved", at)  # since: when it fired
                state.state, state.since = "inactive", at
                return notice
            if at - state.notified_at >= rule.repeat_s:
                state.notified_at = at
                return self._notice(rule, state, "repeat", at)
        return None

    @staticmethod
    def _notice(rule: Rule, state: AlertState, status: str, at: float) -> Notice:
        return Notice(
            rule=rule.name, status=status, severity=rule.severity, summary=rule.describe(),
            metric=rule.metric, lanes=rule.lanes, value=state.value, threshold=rule.threshold,
            op=rule.op, at=at, since=state.since, labels=rule.labels,
        )  # fmt: skip

    def active(self, silences: Mapping[str, float], at: float) -> list[dict[str, Any]]:
        """Pending and firing alerts, as the API and the history show them."""
        shown = []
        for rule in self.rules:
            state = self.states[rule.name]
            if state.state == "inactive":
                continue
            until = silences.get(rule.name, 0.0)
            shown.append({
                "rule": rule.name, "state": state.state, "severity": rule.severity,
                "summary": rule.describe(), "value": state.value, "threshold": rule.threshold,
                "op": rule.op, "metric": rule.metric, "lanes": list(rule.lanes),
                "since": state.since, "labels": dict(rule.labels),
                "silenced_until": until if until > at else None,
            })  # fmt: skip
        return shown

    # -- kept in the broker between evaluations (and monitors) ----------------------------
    def dump(self) -> bytes:
        return json.dumps({name: asdict(s) for name, s in self.states.items()}).encode()

    def load(self, raw: bytes | None) -> None:
        if not raw:
            return
        for name, fields in json.loads(raw).items():
            if name in self.states:
                self.states[name] = AlertState(**fields)
