"""Silences: a rule's notices held back until a time (``emailq alerts silence``, the API).
Kept in the broker, so every monitor and API process sees the same ones."""

from __future__ import annotations

import json

from emailq.monitor.store import MonitorStore

_NAME = "silences"


def silences(store: MonitorStore, at: float) -> dict[str, float]:
    """Rule → silenced until (epoch seconds), those still in force at ``at``."""
    raw = store.get(_NAME)
    found: dict[str, float] = json.loads(raw) if raw else {}
    return {rule: until for rule, until in found.items() if until > at}


def silence(store: MonitorStore, rule: str, until: float, at: float) -> None:
    current = silences(store, at)
    current[rule] = until
    store.put(_NAME, json.dumps(current).encode())


def unsilence(store: MonitorStore, rule: str, at: float) -> bool:
    current = silences(store, at)
    found = current.pop(rule, None) is not None
    store.put(_NAME, json.dumps(current).encode())
    return found
