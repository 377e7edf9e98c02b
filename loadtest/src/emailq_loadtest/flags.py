"""From the command line's flags to run options: the CLI only parses and calls this."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emailq.lanes import Lane
from emailq_loadtest.run import Options
from emailq_loadtest.scenarios import parse_duration, resolve
from emailq_loadtest.service import WorkerFlags
from emailq_loadtest.slo import SloConfig


def parse_p99(items: Sequence[str]) -> dict[Lane, float]:
    """``critical=1`` ``wedding_day=5s`` … on top of the defaults; ``lane=off`` drops one."""
    limits = dict(SloConfig().p99_s)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            lane = Lane(name.strip())
        except ValueError:
            raise ValueError(f"--slo-p99 {item!r}: unknown lane {name!r}") from None
        if not sep:
            raise ValueError(f"--slo-p99 {item!r}: expected LANE=SECONDS, e.g. critical=1")
        if value.strip() == "off":
            limits.pop(lane, None)
        else:
            limits[lane] = parse_duration(value)
    return limits


def options_from_flags(flags: dict[str, Any]) -> Options:
    if flags["target"] and flags["embedded"]:
        raise ValueError("choose one of --target URL and --embedded")
    if flags["target"] and not (flags["api_key"] and flags["sink_port"]):
        raise ValueError(
            "--target needs --api-key and --sink-port: delivery is measured at a sink this run "
            "opens, so the target's workers must deliver to smtp://<this host>:<sink-port>"
        )
    if flags.get("autoscale") and flags["target"]:
        raise ValueError("--autoscale sizes the workers this run starts; a --target's are its own")
    if flags.get("fault") and flags["target"]:
        raise ValueError("--fault needs the embedded service: it stops sinks this run starts")
    if flags["webhooks"] and flags["target"]:
        raise ValueError(
            "--webhooks needs the embedded service (it registers the receiver in the queue's"
            " store and runs `emailq webhooks` beside the workers)"
        )
    scenario = resolve(
        flags["scenario"],
        duration_s=parse_duration(flags["duration"]) if flags["duration"] else None,
        rate_per_min=flags["rate"],
        step_rate_per_min=flags["step_rate"],
        step_s=parse_duration(flags["step_duration"]) if flags["step_duration"] else None,
    )
    slo = SloConfig(
        throughput=flags["slo_throughput"],
        grace_s=flags["slo_grace"],
        success=flags["slo_success"],
        p99_s=parse_p99(flags["slo_p99"]),
        max_lost=flags["slo_max_lost"],
        max_duplicates=flags["slo_max_duplicates"],
    )
    worker = WorkerFlags(
        batch=flags["batch"],
        concurrency=flags["concurrency"],
        smtp_pool=flags["smtp_pool"],
        provider_rate=flags["provider_rate"],
    )
    return Options(
        scenario=scenario,
        slo=slo,
        report_dir=Path(flags["report_dir"]),
        target=flags["target"],
        api_key=flags["api_key"],
        sink_port=flags["sink_port"],
        broker_url=flags["broker_url"],
        workers=flags["workers"],
        autoscale=flags.get("autoscale"),
        sinks=flags["sinks"],
        sink=flags["sink"],
        worker=worker,
        sink_delay=flags["sink_delay"],
        drain_s=parse_duration(flags["drain_timeout"]) if flags["drain_timeout"] else None,
        seed=flags["seed"],
        live=flags["live"],
        fault=flags.get("fault"),
        fault_at_s=parse_duration(flags["fault_at"]) if flags.get("fault_at") else None,
        fault_for_s=parse_duration(flags.get("fault_for") or "30s"),
        webhooks=flags["webhooks"],
    )
