"""Alert rules: what is watched, the defaults, and reading them from TOML.

A rules file adds rules or replaces a default of the same name (``enabled = false`` turns
one off)::

    [[rule]]
    name = "critical_p99"
    metric = "p99_s"          # one of METRICS
    lanes = ["critical"]      # default: every lane
    op = ">"                  # < <= > >=
    threshold = 1.0
    for = "2m"                # breaching this long before it fires
    window = "1m"             # the value over this much history (default: one interval)
    when = "queued"           # only while mail is queued (optional)
    severity = "critical"     # or "warning"
    hysteresis = 0.1          # resolves only 10 % past the threshold: no flapping
    repeat = "4h"             # noticed again while it keeps firing
    labels = { team = "ops" }

A bad rule stops the start naming the rule and the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from emailq.errors import ConfigurationError
from emailq.monitor.snapshot import LANE_NAMES

# metric → what it is (all computed over the rule's lanes and window by .alerts)
METRICS = {
    "throughput_per_min": "emails delivered per minute",
    "success_rate": "delivered / tried (failed, retried and provider-down count against)",
    "queue_depth": "messages not yet delivered (queued, scheduled, leased, retrying)",
    "queued": "messages ready to send now",
    "oldest_age_s": "seconds the oldest ready message has waited",
    "p50_s": "median delivery latency, seconds",
    "p95_s": "95th percentile delivery latency, seconds",
    "p99_s": "99th percentile delivery latency, seconds",
    "dead": "messages buried (dead) in the window",
    "workers_alive": "worker processes that reported within three publish intervals",
    "providers_down": "providers failing their health check",
}
OPERATORS = ("<", "<=", ">", ">=")
SEVERITIES = ("warning", "critical")
CONDITIONS = ("queued",)
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")
_FIELDS = {"name", "metric", "lanes", "op", "threshold", "for", "window", "when", "severity",
           "hysteresis", "repeat", "labels", "summary", "enabled"}  # fmt: skip


def parse_duration(value: object) -> float:
    """``90``, ``"30s"``, ``"5m"``, ``"1h30m"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):  # plain seconds, as a query string gives them
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    op: str
    threshold: float
    for_s: float = 0.0
    severity: str = "critical"
    lanes: tuple[str, ...] = ()  # () : every lane
    window_s: float = 0.0  # 0: one interval
    when: str | None = None
    hysteresis: float = 0.1
    repeat_s: float = 4 * 3600.0
    labels: tuple[tuple[str, str], ...] = ()
    summary: str = ""
    enabled: bool = True

    def breaches(self, value: float) -> bool:
        return _compare(value, self.op, self.threshold)

    def recovered(self, value: float) -> bool:
        """Past the threshold by the hysteresis margin, on the good side."""
        margin = abs(self.threshold) * self.hysteresis
        if self.op in ("<", "<="):
            return value >= self.threshold + margin if margin else not self.breaches(value)
        return value <= self.threshold - margin if margin else not self.breaches(value)

    def describe(self) -> str:
        where = f" ({', '.join(self.lanes)})" if self.lanes else ""
        return self.summary or f"{self.metric}{where} {self.op} {self.threshold:g}"


def _compare(value: float, op: str, threshold: float) -> bool:
    return {
        "<": value < threshold, "<=": value <= threshold,
        ">": value > threshold, ">=": value >= threshold,
    }[op]  # fmt: skip


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("low_throughput", "throughput_per_min", "<", 100, for_s=300, severity="warning",
         window_s=300, when="queued", summary="delivering under 100/min while mail is queued"),
    Rule("low_success_rate", "success_rate", "<", 0.95, for_s=300, window_s=300, hysteresis=0.02,
         summary="success rate under 95 %"),
    Rule("deep_queue", "queue_depth", ">", 5000, for_s=300, summary="over 5,000 messages waiting"),
    Rule("wedding_day_success_rate", "success_rate", "<", 0.99, for_s=120, window_s=300,
         lanes=("critical", "wedding_day"), hysteresis=0.005,
         summary="wedding-day lanes' success rate under 99 %"),
    Rule("critical_p99", "p99_s", ">", 1.0, for_s=120, window_s=300, lanes=("critical",),
         summary="critical mail's p99 latency over 1 s"),
    Rule("wedding_day_p99", "p99_s", ">", 5.0, for_s=120, window_s=300, lanes=("wedding_day",),
         summary="wedding_day mail's p99 latency over 5 s"),
    Rule("dead_letters", "dead", ">", 0, window_s=900, summary="mail is going dead"),
    Rule("no_workers", "workers_alive", "<", 1, for_s=60, when="queued", hysteresis=0,
         summary="no worker heartbeat while mail is queued"),
    Rule("provider_down", "providers_down", ">", 0, for_s=60,
         summary="a provider fails its health check"),
)  # fmt: skip


def _bad(rule: str, field_name: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"alert rule {rule!r}, field {field_name!r}: {message}")


def rule_from_table(table: dict[str, Any], base: Rule | None = None) -> Rule:  # noqa: C901
    """One ``[[rule]]`` table, over the default of the same name when there is one."""
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(str(name or "?"), "name", "every rule needs a name")
    for key in table:
        if key not in _FIELDS:
            raise _bad(name, key, f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    values: dict[str, Any] = {}
    if "metric" in table:
        if table["metric"] not in METRICS:
            raise _bad(name, "metric", f"unknown metric {table['metric']!r}"
                       f" (known: {', '.join(METRICS)})")  # fmt: skip
        values["metric"] = table["metric"]
    if "op" in table:
        if table["op"] not in OPERATORS:
            raise _bad(name, "op", f"unknown operator {table['op']!r} (use {' '.join(OPERATORS)})")
        values["op"] = table["op"]
    if "threshold" in table:
        if isinstance(table["threshold"], bool) or not isinstance(table["threshold"], int | float):
            raise _bad(name, "threshold", "expected a number")
        values["threshold"] = float(table["threshold"])
    for key, attr in (("for", "for_s"), ("window", "window_s"), ("repeat", "repeat_s")):
        if key in table:
            try:
                values[attr] = parse_duration(table[key])
            except ValueError as error:
                raise _bad(name, key, str(error)) from None
    if "severity" in table:
        if table["severity"] not in SEVERITIES:
            raise _bad(name, "severity", f"expected one of {', '.join(SEVERITIES)}")
        values["severity"] = table["severity"]
    if "lanes" in table:
        lanes = table["lanes"]
        if not isinstance(lanes, list) or any(lane not in LANE_NAMES for lane in lanes):
            raise _bad(name, "lanes", f"expected a list of lanes from {', '.join(LANE_NAMES)}")
        values["lanes"] = tuple(lanes)
    if "when" in table:
        if table["when"] not in CONDITIONS:
            raise _bad(name, "when", f"expected one of {', '.join(CONDITIONS)}")
        values["when"] = table["when"]
    if "hysteresis" in table:
        h = table["hysteresis"]
        if isinstance(h, bool) or not isinstance(h, int | float) or not 0 <= h < 1:
            raise _bad(name, "hysteresis", "expected a fraction from 0 to below 1")
        values["hysteresis"] = float(h)
    if "labels" in table:
        labels = table["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise _bad(name, "labels", "expected a table of strings")
        values["labels"] = tuple(sorted(labels.items()))
    for key in ("summary", "enabled"):
        if key in table:
            expected = str if key == "summary" else bool
            if not isinstance(table[key], expected):
                raise _bad(name, key, f"expected a {expected.__name__}")
            values[key] = table[key]
    if base is not None:
        return replace(base, **values)
    missing = [key for key in ("metric", "op", "threshold") if key not in values]
    if missing:
        raise _bad(name, missing[0], "required for a new rule")
    return Rule(name=name, **values)


def load_rules(path: Path | None) -> tuple[Rule, ...]:
    """The defaults, with the file's rules over them by name; only enabled rules."""
    rules = {rule.name: rule for rule in DEFAULT_RULES}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"alert rules {path}: {error}") from None
        unknown = set(data) - {"rule"}
        if unknown:
            raise ConfigurationError(f"alert rules {path}: unknown section {sorted(unknown)[0]!r}")
        tables = data.get("rule", [])
        if not isinstance(tables, list):
            raise ConfigurationError(f"alert rules {path}: write each rule as [[rule]]")
        for table in tables:
            rule = rule_from_table(table, rules.get(str(table.get("name"))))
            rules[rule.name] = rule
    return tuple(rule for rule in rules.values() if rule.enabled)
