"""The ``emailq`` command line: it parses, then calls the library. Nothing else lives here.

Every command starts from one :class:`~emailq.deployment.Deployment` built from the
settings: defaults → ``--config`` file → ``EMAILQ_*`` environment → the flags given here.
A flag that is not given sets nothing, so the file and the environment still count.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from emailq.errors import EmailqError
from emailq.lanes import LANE_ORDER, Lane
from emailq.settings import Settings, described_fields, display, redact_url

if TYPE_CHECKING:
    from rich.table import Table

    from emailq.broker import Stats
    from emailq.deployment import Deployment

# Heavy modules (the deployment, rich's tables, the API client) are imported by the
# commands that use them: `emailq worker` starts a worker, and should start it soon.

# Which setting each flag sets (flags of the same name mean the same setting everywhere).
SETTING_OF = {
    "broker_url": "broker.url",
    "provider_url": "provider.url",
    "domain": "domain",
    "processes": "worker.processes",
    "batch": "worker.batch_size",
    "concurrency": "worker.concurrency",
    "lease": "worker.lease_s",
    "retry_base": "worker.retry_base_s",
    "shutdown_timeout": "worker.shutdown_timeout_s",
    "metrics_port": "worker.metrics_port",
    "provider_rate": "limits.provider_rate",
    "domain_rate": "limits.domain_rate",
    "tenant_rate": "limits.tenant_rate",
    "host": "api.host",
    "port": "api.port",
    "workers": "api.workers",
    "intake_rate": "api.tenant_rate",
    "intake_burst": "api.tenant_burst",
    "api_url": "api.url",
    "api_key": "api.key",
    "autoscale_enabled": "autoscale.enabled",
    "autoscale_min": "autoscale.min_workers",
    "autoscale_max": "autoscale.max_workers",
}
_FIELDS = dict(described_fields())


def setting(*decls: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option for a setting: no default of its own (unset, it leaves the setting to the
    file and the environment); its help shows the setting's name and default."""
    name = decls[0].lstrip("-").split("/")[0].replace("-", "_")
    for decl in decls:
        if decl.startswith("--") and "/" not in decl:
            name = decl[2:].replace("-", "_")
    dotted = SETTING_OF[name]
    field = _FIELDS[dotted]
    default = "" if field.default is None else f"; default {display(field.default)}"
    kwargs.setdefault("help", str(field.description))
    kwargs["help"] += f" [{dotted}{default}]"
    return click.option(*decls, default=None, **kwargs)


def load_settings(ctx: click.Context, flags: dict[str, Any]) -> Settings:
    """The effective settings for a command: its flags over the file and the environment."""
    nested: dict[str, Any] = {}
    for name, value in flags.items():
        if isinstance(value, tuple):  # a repeated flag: --provider-url a --provider-url b
            value = ",".join(value) or None
        if name in SETTING_OF and value is not None:
            *sections, leaf = SETTING_OF[name].split(".")
            node = nested
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
    config = ctx.find_root().params.get("config")
    return Settings.load(config_file=config, flags=nested)


def open_deployment(ctx: click.Context, flags: dict[str, Any]) -> Deployment:
    return deployment_of(load_settings(ctx, flags))


def deployment_of(settings: Settings) -> Deployment:
    from emailq.deployment import Deployment

    return Deployment.from_settings(settings)


BROKER_URL = setting("--broker-url")
# Repeated, a failover chain in order, primary first (the same as commas in one value).
PROVIDER_URL = setting("--provider-url", multiple=True)


@click.group()
@click.version_option(package_name="emailq")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="a settings file (TOML); default: $EMAILQ_CONFIG",
)
def cli(config: str | None) -> None:
    """emailq: a durable, priority-aware outbound email queue."""


@cli.command("config")
@BROKER_URL
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def show_config(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """The effective settings (secrets redacted) and where each one came from."""
    settings = load_settings(ctx, flags)
    rows = list(settings.rows())
    if as_json:
        body = {name: {"value": value, "source": source} for name, value, source in rows}
        click.echo(json.dumps(body, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="emailq settings")
    for column in ("setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@cli.command()
@click.option("--weddings", default=3, show_default=True, help="weddings sending invitations")
@click.option("--guests", default=500, show_default=True, help="invitations per wedding")
@click.option("--vendors", default=40, show_default=True, help="recipients of the ceremony change")
@click.option("--broker-url", default=None, help="default: a fresh SQLite file in a temp dir")
def demo(weddings: int, guests: int, vendors: int, broker_url: str | None) -> None:
    """Queue a wedding Saturday's mail and deliver it to the built-in SMTP sink."""
    from emailq.demo import DemoPlan
    from emailq.demo import demo as run

    sys.exit(run(DemoPlan(weddings, guests, vendors), broker_url))


@cli.command()
@BROKER_URL
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="the monitor's live view: rates, percentiles, alerts")
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, watch: bool, **flags: Any) -> None:
    """Depth per lane and state, and how long the oldest ready message has waited."""
    if watch:
        from emailq.monitor.watch import watch as watch_live

        with open_deployment(ctx, flags) as deployment:
            watch_live(deployment, redact_url(deployment.settings.broker.url))
        return
    with open_deployment(ctx, flags) as deployment:
        stats = deployment.status()
        where = redact_url(deployment.settings.broker.url)
    if as_json:
        click.echo(json.dumps({"broker": where} | stats_to_dict(stats), indent=2))
    else:
        from rich.console import Console

        Console().print(stats_table(stats, where))


@cli.command()
@BROKER_URL
@PROVIDER_URL
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def providers(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """Each provider of the chain: state, last health check, failed checks in a row."""
    with open_deployment(ctx, flags) as deployment:
        rows = deployment.providers()
    if as_json:
        click.echo(json.dumps([asdict(row) for row in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("provider", "state", "last check", "failed checks", "last failure")
    for row in rows:
        checked = (
            "never"
            if row.last_check is None
            else (datetime.fromtimestamp(row.last_check).isoformat(sep=" ", timespec="seconds"))
        )
        reason = ("credentials refused: " if row.credentials_refused else "") + row.reason
        table.add_row(row.name, row.state, checked, str(row.failures), reason)
    Console().print(table)


@cli.command()
@BROKER_URL
@click.argument("message_id")
@click.pass_context
def get(ctx: click.Context, /, message_id: str, **flags: Any) -> None:
    """One message's state, attempts and last error."""
    with open_deployment(ctx, flags) as deployment:
        info = deployment.broker.get(message_id)
    if info is None:
        raise click.ClickException(f"no message {message_id}")
    fields = {k: getattr(info, k) for k in info.__dataclass_fields__}
    click.echo(json.dumps(fields, indent=2, default=str))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2525, show_default=True)
def sink(host: str, port: int) -> None:
    """Run the built-in SMTP sink, printing how many messages arrived each second."""
    from emailq.sink import SmtpSink

    with SmtpSink(host, port) as server:
        click.echo(f"SMTP sink listening on {host}:{server.port} (Ctrl-C to stop)")
        last = 0
        try:
            while True:
                time.sleep(1)
                count = server.count
                click.echo(f"received {count} (+{count - last}/s)")
                last = count
        except KeyboardInterrupt:
            click.echo(f"stopped after {server.count} messages")


def worker_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every command that runs workers takes."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        BROKER_URL,
        PROVIDER_URL,
        setting("--domain"),
        setting("-n", "--processes", type=int),
        setting("--batch", type=int),
        setting("--concurrency", type=int),
        setting("--lease", type=float),
        setting("--retry-base", type=float),
        setting("--shutdown-timeout", type=float),
        setting("--provider-rate", type=float),
        setting("--domain-rate", type=float),
        setting("--tenant-rate", type=float),
        setting("--metrics-port", type=int),
        click.pass_context,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def start_workers(
    ctx: click.Context, default_processes: int, flags: dict[str, Any], monitor: bool = False
) -> None:
    """One worker here, or a supervised pool. `emailq run` also watches its own queue: the
    monitor runs in the first worker (the broker's lease keeps it to one writer)."""
    settings = load_settings(ctx, flags)
    processes = settings.worker.processes or default_processes
    if settings.autoscale.enabled:
        sys.exit(run_autoscaled(settings, monitor))
    if processes == 1:
        from emailq.worker_process import worker_main

        worker_main(settings, monitor=monitor)
        return
    from emailq.supervisor import Launch, Supervisor, exec_supervisor

    launch = Launch.of(settings, monitor)
    exec_supervisor(launch, processes)  # returns only if the launch cannot be handed over
    sys.exit(Supervisor(launch, processes).run())


def run_autoscaled(settings: Settings, monitor: bool = False) -> int:
    """A pool that starts at the minimum and follows the autoscaler's decisions (in this
    process: the autoscaler reads the broker, so it is no lean supervisor)."""
    from prometheus_client import start_http_server

    from emailq.autoscale.controller import Autoscaler, config_from_settings
    from emailq.deployment import Deployment
    from emailq.logs import configure_logging
    from emailq.supervisor import Launch, Supervisor

    configure_logging(settings)
    section = settings.autoscale
    with Deployment.from_settings(settings) as deployment:
        autoscaler = Autoscaler(
            deployment.broker, config_from_settings(section), section.interval_s
        )
        if section.metrics_port:
            start_http_server(section.metrics_port, "127.0.0.1", autoscaler.metrics.registry)
        launch = Launch.of(settings, monitor)
        return Supervisor(launch, section.min_workers, autoscaler).run()


def parse_autoscale(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``MIN:MAX`` → (min, max), refusing a minimum above the maximum."""
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise click.BadParameter(f"{value!r} is not MIN:MAX, e.g. 2:20")
    low, high = int(parts[0]), int(parts[1])
    if low < 1:
        raise click.BadParameter(f"the minimum in {value!r} must be at least 1")
    if low > high:
        raise click.BadParameter(f"the minimum {low} is above the maximum {high} in {value!r}")
    return low, high


@cli.command()
@worker_options
def worker(ctx: click.Context, /, **flags: Any) -> None:
    """Deliver queued mail until SIGTERM or Ctrl-C (finishing the batches in hand)."""
    start_workers(ctx, 1, flags)


@cli.command()
@worker_options
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    callback=parse_autoscale,
    help="size the pool from the queue between MIN and MAX workers [autoscale.*]",
)
def run(ctx: click.Context, /, autoscale: tuple[int, int] | None, **flags: Any) -> None:
    """The all-in-one process for one machine: a supervised pool of workers, and the
    monitor (unless monitor.enabled is false)."""
    if autoscale is not None:
        flags.update(autoscale_enabled=True, autoscale_min=autoscale[0], autoscale_max=autoscale[1])
    start_workers(ctx, 2, flags, monitor=True)


@cli.command()
@BROKER_URL
@setting("--provider-url", help="health-checked by the monitor")
@click.pass_context
def monitor(ctx: click.Context, /, **flags: Any) -> None:
    """Keep the queue's history and evaluate alert rules until SIGTERM or Ctrl-C (any
    number may run: one writes at a time)."""
    import signal
    import threading

    from emailq.logs import configure_logging
    from emailq.monitor.runner import Monitor

    settings = load_settings(ctx, flags)
    configure_logging(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with deployment_of(settings) as deployment:
        running = Monitor(deployment)
        every = settings.monitor.interval_s
        where = redact_url(settings.broker.url)
        click.echo(f"monitoring {where} every {every:g} s ({len(running.rules)} alert rules)")
        try:
            running.run(stop)
        finally:
            running.close()


@cli.group()
def alerts() -> None:
    """The monitor's alerts: list them, silence a rule."""


@alerts.command("list")
@BROKER_URL
@click.pass_context
def alerts_list(ctx: click.Context, /, **flags: Any) -> None:
    """Pending and firing alerts, and the silences in force."""
    from emailq.monitor.silences import silences
    from emailq.monitor.snapshot import Snapshot
    from emailq.monitor.store import open_store

    with open_deployment(ctx, flags) as deployment:
        store = open_store(deployment.broker)
        at = deployment.clock()
        recent = store.history(at - 3600, at)
        active = Snapshot.from_json(recent[-1][1]).alerts if recent else []
        silenced = silences(store, at)
        store.close()
    for alert in active:
        click.echo(f"{alert['state']:<8} {alert['severity']:<8} {alert['rule']}: "
                   f"{alert['summary']} (value {alert['value']})")  # fmt: skip
    for rule, until in silenced.items():
        click.echo(f"silenced {rule} until {datetime.fromtimestamp(until).isoformat()}")
    if not active and not silenced:
        click.echo("no alerts")


@alerts.command("silence")
@BROKER_URL
@click.argument("rule")
@click.option("--for", "duration", default="1h", show_default=True, help="e.g. 30m, 2h")
@click.pass_context
def alerts_silence(ctx: click.Context, /, rule: str, duration: str, **flags: Any) -> None:
    """Hold back a rule's notices for a while (it is still evaluated and shown)."""
    from emailq.monitor.rules import load_rules, parse_duration
    from emailq.monitor.silences import silence
    from emailq.monitor.store import open_store

    try:
        seconds = parse_duration(duration)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--for") from None
    settings = load_settings(ctx, flags)
    if rule not in {r.name for r in load_rules(settings.monitor.rules_file)}:
        raise click.ClickException(f"no alert rule {rule}")
    with deployment_of(settings) as deployment:
        store = open_store(deployment.broker)
        at = deployment.clock()
        silence(store, rule, at + seconds, at)
        store.close()
    click.echo(f"silenced {rule} for {duration}")


@alerts.command("unsilence")
@BROKER_URL
@click.argument("rule")
@click.pass_context
def alerts_unsilence(ctx: click.Context, /, rule: str, **flags: Any) -> None:
    """End a rule's silence."""
    from emailq.monitor.silences import unsilence
    from emailq.monitor.store import open_store

    with open_deployment(ctx, flags) as deployment:
        store = open_store(deployment.broker)
        found = unsilence(store, rule, deployment.clock())
        store.close()
    if not found:
        raise click.ClickException(f"{rule} is not silenced")
    click.echo(f"{rule} is no longer silenced")


@cli.command()
@BROKER_URL
@click.option("--date", "day", required=True, help="the day (UTC), YYYY-MM-DD")
@click.option("--wedding", help="only this wedding's mail in the per-wedding part")
@click.option("--out", default=None, help="folder for report.html and report.json")
@click.pass_context
def report(ctx: click.Context, /, day: str, wedding: str | None, out: str | None,
           **flags: Any) -> None:  # fmt: skip
    """One day's volumes, latencies, failures and alerts per lane and per wedding."""
    from datetime import date
    from pathlib import Path

    from emailq.monitor.report import build_report, write_report
    from emailq.monitor.store import open_store

    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        raise click.BadParameter("give YYYY-MM-DD", param_hint="--date") from None
    with open_deployment(ctx, flags) as deployment:
        store = open_store(deployment.broker)
        body = build_report(store, parsed, wedding)
        store.close()
    folder = Path(out or f"emailq-report-{parsed.isoformat()}")
    json_path, html_path = write_report(body, folder)
    click.echo(f"{html_path} and {json_path} ({body['snapshots']} snapshots)")


@cli.command()
@BROKER_URL
@click.option("--once", is_flag=True, required=True, help="decide once and print (required)")
@click.option("--workers", type=int, help="the pool running now (default: autoscale.min_workers)")
@click.option("--window", default=5.0, show_default=True, help="seconds to measure rates over")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def autoscale(
    ctx: click.Context, /, once: bool, workers: int | None, window: float, as_json: bool,
    **flags: Any,
) -> None:  # fmt: skip
    """Print how many workers the queue needs now, and why (for any orchestrator)."""
    from emailq.autoscale.controller import config_from_settings
    from emailq.autoscale.observe import Observer
    from emailq.autoscale.policy import decide

    settings = load_settings(ctx, flags)
    config = config_from_settings(settings.autoscale)
    pool = config.min_workers if workers is None else workers
    with open_deployment(ctx, flags) as deployment:
        observer = Observer(deployment.broker, config.lookahead_s, config.ceremony_horizon_s)
        observer.observe(pool)
        time.sleep(window)  # two snapshots: the arrival and delivery rates between them
        decision = decide(observer.observe(pool), config, deployment.broker.now())
    if as_json:
        body = {"workers": decision.workers, "direction": decision.direction,
                "reason": decision.reason, "demand": decision.demand.workers}  # fmt: skip
        click.echo(json.dumps(body))
    else:
        click.echo(f"{decision.workers}\n{decision.reason}")


@cli.command()
@BROKER_URL
@setting("--api-url", help="send through a running API instead of the broker")
@setting("--api-key")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="the email as JSON (the API's shape) or as an .eml message",
)
@click.option("--from", "sender", help="sender address")
@click.option("--to", multiple=True, help="recipient (repeatable)")
@click.option("--subject")
@click.option("--text", help="plain-text body")
@click.option("--html", help="HTML body")
@click.option("--kind", help="message kind, e.g. ceremony_change")
@click.option("--wedding-id")
@click.option("--ceremony-at", help="ISO 8601 time with offset")
@click.option("--idempotency-key")
@click.option("--send-at", help="ISO 8601 time with offset: send no earlier")
@click.option("--expires-at", help="ISO 8601 time with offset: give up after (not sent late)")
@click.option("--max-attempts", type=int, help="give up after this many attempts")
@click.pass_context
def send(ctx: click.Context, /, path: str | None, **fields: Any) -> None:
    """Queue one email, from flags or a file; prints its id and lane."""
    from emailq.sendcmd import email_fields, send_via_api

    settings = load_settings(ctx, fields)
    data = email_fields(path, fields)
    if settings.api.url:
        if settings.api.key is None:
            raise click.UsageError("--api-url needs --api-key (or EMAILQ_API_KEY)")
        key = settings.api.key.get_secret_value()
        message_id, lane = send_via_api(settings.api.url, key, data)
    else:
        with deployment_of(settings) as deployment:
            queued = deployment.send(data)
        message_id, lane = queued.id, queued.lane
    click.echo(f"{message_id} {lane}")


@cli.command()
@BROKER_URL
@setting("--host")
@setting("--port", type=int)
@setting("--provider-url", multiple=True, help="checked by /health/ready")
@setting("--intake-rate", type=float)
@setting("--intake-burst", type=float)
@setting("--workers", type=int)
@click.pass_context
def serve(ctx: click.Context, /, **flags: Any) -> None:
    """Serve the HTTP intake API."""
    from emailq.api.server import serve as serve_api

    serve_api(load_settings(ctx, flags))


@cli.command()
@click.option(
    "--scenario",
    default="standard",
    show_default=True,
    type=click.Choice(["standard", "wedding-day", "stress", "endurance"]),
)
@click.option("--duration", help="e.g. 30s, 2m, 1h (default: the scenario's)")
@click.option("--rate", type=float, help="emails/min (stress: the first step's)")
@click.option("--target", help="drive a running API at this URL instead of an embedded service")
@click.option("--embedded", is_flag=True, help="start broker, workers and sinks here (default)")
@click.option("--api-key", envvar="EMAILQ_API_KEY", help="with --target")
@click.option("--sink-port", type=int, help="with --target: the sink its workers deliver to")
@click.option("--broker-url", help="embedded broker (default: SQLite in a temp dir)")
@click.option("--workers", default=2, show_default=True, help="worker processes")
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    callback=parse_autoscale,
    help="size the worker pool with emailq's autoscaler instead of --workers",
)
@click.option("--sinks", type=int, help="sink processes (default: one per 40,000/min of peak)")
@click.option(
    "--sink",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "aiosmtpd", "lean"]),
    help="the built-in sink, or a lean one that leaves the CPU to emailq; auto: "
    "the built-in one up to 40,000/min",
)
@click.option("--batch", default=100, show_default=True, help="messages per lease")
@click.option("--concurrency", default=2, show_default=True, help="batches in flight per worker")
@click.option("--smtp-pool", default=8, show_default=True, help="SMTP connections per worker")
@click.option("--provider-rate", type=float, help="throttle: provider limit, messages/s")
@click.option("--sink-delay", default=0.0, help="throttle: seconds the sink stalls per message")
@click.option(
    "--fault",
    type=click.Choice(["provider-outage"]),
    help="provider-outage: workers get a second sink as a failover chain, and the first"
    " stops for --fault-for in the middle of the load",
)
@click.option("--fault-at", help="when the fault starts (default: a third into the load)")
@click.option("--fault-for", default="30s", show_default=True, help="how long it lasts")
@click.option("--step-rate", type=float, help="stress: emails/min added per step")
@click.option("--step-duration", help="stress: length of each step (default 15s)")
@click.option("--drain-timeout", help="how long to wait for the backlog after the load")
@click.option(
    "--slo-throughput",
    default=0.95,
    show_default=True,
    help="share of offered mail delivered by the end of the load + grace",
)
@click.option("--slo-grace", default=2.0, show_default=True, help="seconds, for throughput")
@click.option("--slo-success", default=0.999, show_default=True, help="delivered / sent")
@click.option(
    "--slo-p99",
    multiple=True,
    metavar="LANE=SECONDS",
    help="p99 objective (default critical=1 wedding_day=5; LANE=off drops one)",
)
@click.option("--slo-max-lost", default=0, show_default=True)
@click.option("--slo-max-duplicates", default=0, show_default=True)
@click.option("--report-dir", default="loadtest-report", show_default=True)
@click.option("--seed", default=0, show_default=True, help="the schedule's random seed")
@click.option("--live/--no-live", default=None, help="rich live view (default: on a terminal)")
@click.option(
    "--webhooks",
    is_flag=True,
    help="embedded: a local webhook receiver for every event, and event lag (sent → received)"
    " in the report",
)
def loadtest(**flags: Any) -> None:
    """Open-loop load with SLO verdicts and an HTML + JSON report; exit 0 only if all hold."""
    try:  # the emailq-loadtest distribution: an extra, so production images need not carry it
        from emailq_loadtest.flags import options_from_flags
        from emailq_loadtest.run import main as run_loadtest
    except ModuleNotFoundError as error:
        if error.name != "emailq_loadtest":
            raise
        raise click.ClickException(
            "emailq loadtest needs the load-test extra: pip install 'emailq[loadtest]'"
        ) from None

    try:
        options = options_from_flags(flags)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    sys.exit(run_loadtest(options))


@cli.command()
@BROKER_URL
@click.option("--dead", is_flag=True, required=True, help="requeue dead mail (required)")
@click.option("--since", help="only mail that died since: 30m, 2h, 1d, or ISO 8601 with offset")
@click.option("--lane", type=click.Choice([lane.value for lane in LANE_ORDER]))
@click.option("--tenant", help="only this tenant's mail")
@click.option("--id", "ids", multiple=True, help="only this message (repeatable)")
@click.option("--limit", default=10_000, show_default=True, help="the most to requeue")
@click.pass_context
def requeue(
    ctx: click.Context, /, dead: bool, since: str | None, lane: str | None, tenant: str | None,
    ids: tuple[str, ...], limit: int, **flags: Any,
) -> None:  # fmt: skip
    """Queue dead mail again, with fresh attempts and a fresh expiry; prints how many."""
    with open_deployment(ctx, flags) as deployment:
        broker = deployment.broker
        count = broker.requeue_dead(
            list(ids) or None,
            since=None if since is None else since_timestamp(since, broker.now()),
            lane=Lane(lane) if lane else None,
            tenant=tenant,
            limit=limit,
        )
    click.echo(f"requeued {count} dead message{'' if count == 1 else 's'}")


_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_timestamp(text: str, now: float) -> float:
    """``2h`` (that long before ``now``) or an ISO 8601 time with its offset, as epoch s."""
    ago = _AGO.fullmatch(text.strip())
    if ago:
        return now - float(ago[1]) * _SECONDS[ago[2]]
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        hint = "give 30m, 2h, 1d… or an ISO 8601 time"
        raise click.BadParameter(hint, param_hint="--since") from None
    if at.tzinfo is None:
        raise click.BadParameter("give the time's offset, e.g. +02:00 or Z", param_hint="--since")
    return at.timestamp()


@cli.group()
def keys() -> None:
    """Manage API keys (stored hashed beside the queue)."""


@keys.command("create")
@BROKER_URL
@click.option("--tenant", required=True)
@click.option("--name", default="", help="what the key is for")
@click.option("--trusted", is_flag=True, help="may set an explicit priority")
@click.option("--operator", is_flag=True, help="sees every tenant's queue counts and /metrics")
@click.pass_context
def keys_create(
    ctx: click.Context, /, tenant: str, name: str, trusted: bool, operator: bool, **flags: Any
) -> None:
    """Create a key; it is shown once and only its hash is stored."""
    with open_deployment(ctx, flags) as deployment:
        key, secret = deployment.keys.create(tenant, name, trusted, operator)
    click.echo(f"created key {key.key_id} for tenant {tenant}:")
    click.echo(secret)


@keys.command("list")
@BROKER_URL
@click.pass_context
def keys_list(ctx: click.Context, /, **flags: Any) -> None:
    """List keys (ids, tenants, state; never the secrets)."""
    with open_deployment(ctx, flags) as deployment:
        listed = deployment.keys.list()
    for key in listed:
        state = "active" if key.active else "revoked"
        trusted = (" trusted" if key.trusted else "") + (" operator" if key.operator else "")
        click.echo(f"{key.key_id}  {key.tenant:<20} {state}{trusted}  {key.name}")


@keys.command("revoke")
@BROKER_URL
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, /, key_id: str, **flags: Any) -> None:
    """Revoke a key by its id (takes effect within 5 seconds everywhere)."""
    with open_deployment(ctx, flags) as deployment:
        revoked = deployment.keys.revoke(key_id)
    if not revoked:
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


def stats_to_dict(stats: Stats) -> dict[str, object]:
    return {
        "taken_at": stats.taken_at,
        "lanes": {
            lane.value: {
                "counts": {state.value: n for state, n in lane_stats.counts.items()},
                "oldest_age_s": round(lane_stats.oldest_age, 3),
            }
            for lane, lane_stats in stats.lanes.items()
        },
    }


def stats_table(stats: Stats, where: str = "") -> Table:
    from rich.table import Table

    from emailq.broker import State

    table = Table(title=f"emailq queue {where}".strip())
    table.add_column("lane", no_wrap=True)
    for state in State:
        table.add_column(state.value, justify="right")
    table.add_column("oldest ready", justify="right")
    for lane in LANE_ORDER:
        lane_stats = stats.lanes[lane]
        counts = [str(lane_stats.counts.get(state, 0)) for state in State]
        table.add_row(lane.value, *counts, f"{lane_stats.oldest_age:.1f} s")
    return table


# The data-protection commands register themselves on the group (kept in their own module).
import emailq.cli_batches  # noqa: E402
import emailq.cli_privacy  # noqa: E402
import emailq.cli_webhooks  # noqa: E402, F401


def main() -> None:
    try:
        cli()
    except EmailqError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
