"""The ``emailq`` command line: it parses, then calls the library. Nothing else lives here."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from emailq.broker import State, Stats, open_broker
from emailq.config import Settings
from emailq.errors import EmailqError
from emailq.lanes import LANE_ORDER
from emailq.ratelimit.rules import RateRules
from emailq.worker import WorkerSettings

BROKER_OPTION = click.option(
    "--broker-url",
    envvar="EMAILQ_BROKER_URL",
    default=Settings().broker_url,
    show_default=True,
    help="sqlite:///path.db (embedded) or redis://host:port/db",
)


@click.group()
@click.version_option(package_name="emailq")
def cli() -> None:
    """emailq: a durable, priority-aware outbound email queue."""


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
@BROKER_OPTION
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(broker_url: str, as_json: bool) -> None:
    """Depth per lane and state, and how long the oldest ready message has waited."""
    with open_broker(broker_url) as broker:
        stats = broker.stats()
    if as_json:
        click.echo(json.dumps(stats_to_dict(stats), indent=2))
    else:
        Console().print(stats_table(stats))


@cli.command()
@BROKER_OPTION
@click.argument("message_id")
def get(broker_url: str, message_id: str) -> None:
    """One message's state, attempts and last error."""
    with open_broker(broker_url) as broker:
        info = broker.get(message_id)
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


def worker_options(default_processes: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options every command that runs workers takes."""
    options = [
        BROKER_OPTION,
        click.option(
            "--provider-url", envvar="EMAILQ_PROVIDER_URL", default=Settings().provider_url,
            show_default=True, help="smtp://host:port, smtps://, resend://, file:///dir",
        ),
        click.option("-n", "--processes", default=default_processes, show_default=True),
        click.option("--batch", default=100, show_default=True, help="messages per lease"),
        click.option("--concurrency", default=2, show_default=True, help="batches in flight"),
        click.option("--lease", default=30.0, show_default=True, help="lease seconds"),
        click.option("--retry-base", default=10.0, show_default=True, help="first retry delay s"),
        click.option("--shutdown-timeout", default=20.0, show_default=True,
                     help="seconds in-flight batches get after SIGTERM"),
        click.option("--provider-rate", type=float, help="messages/s through the provider"),
        click.option("--domain-rate", type=float, help="messages/s per recipient domain"),
        click.option("--tenant-rate", type=float, help="messages/s per tenant"),
        click.option("--metrics-port", default=0, help="Prometheus port of the first worker"
                     " (the next worker +1, …); 0: none"),
    ]  # fmt: skip

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def start_workers(processes: int, **flags: Any) -> None:
    from emailq.supervisor import Supervisor, WorkerConfig, worker_main

    config = WorkerConfig(
        broker_url=flags["broker_url"],
        provider_url=flags["provider_url"],
        settings=WorkerSettings(
            batch_size=flags["batch"],
            concurrency=flags["concurrency"],
            lease_s=flags["lease"],
            retry_base_s=flags["retry_base"],
            shutdown_timeout=flags["shutdown_timeout"],
        ),
        rules=RateRules(
            provider_rate=flags["provider_rate"],
            domain_rate=flags["domain_rate"],
            tenant_rate=flags["tenant_rate"],
        ),
        metrics_port=flags["metrics_port"],
    )
    if processes == 1:
        worker_main(config)
    else:
        sys.exit(Supervisor(config, processes).run())


@cli.command()
@worker_options(default_processes=1)
def worker(processes: int, **flags: Any) -> None:
    """Deliver queued mail until SIGTERM or Ctrl-C (finishing the batches in hand)."""
    start_workers(processes, **flags)


@cli.command()
@worker_options(default_processes=2)
def run(processes: int, **flags: Any) -> None:
    """The all-in-one process for one machine: a supervised pool of workers."""
    start_workers(processes, **flags)


@cli.command()
@BROKER_OPTION
@click.option("--api-url", envvar="EMAILQ_API_URL", help="send through a running API instead")
@click.option("--api-key", envvar="EMAILQ_API_KEY", help="the API key (with --api-url)")
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
def send(broker_url: str, api_url: str | None, api_key: str | None, path: str | None,
         **fields: Any) -> None:  # fmt: skip
    """Queue one email, from flags or a file; prints its id and lane."""
    from emailq.sendcmd import email_fields, send_via_api, send_via_broker

    data = email_fields(path, fields)
    if api_url:
        if not api_key:
            raise click.UsageError("--api-url needs --api-key (or EMAILQ_API_KEY)")
        message_id, lane = send_via_api(api_url, api_key, data)
    else:
        message_id, lane = send_via_broker(broker_url, data)
    click.echo(f"{message_id} {lane}")


@cli.command()
@BROKER_OPTION
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True)
@click.option(
    "--provider-url", envvar="EMAILQ_PROVIDER_URL", default=None, help="checked by /health/ready"
)
@click.option("--tenant-rate", type=float, help="emails/s each tenant may submit")
@click.option("--workers", default=1, show_default=True, help="server processes")
def serve(
    broker_url: str,
    host: str,
    port: int,
    provider_url: str | None,
    tenant_rate: float | None,
    workers: int,
) -> None:
    """Serve the HTTP intake API."""
    import os

    import uvicorn

    # Every server process builds its app from these (uvicorn imports the factory in each).
    os.environ["EMAILQ_BROKER_URL"] = broker_url
    os.environ.pop("EMAILQ_PROVIDER_URL", None)
    if provider_url:
        os.environ["EMAILQ_PROVIDER_URL"] = provider_url
    if tenant_rate:
        os.environ["EMAILQ_TENANT_RATE"] = str(tenant_rate)
    uvicorn.run(
        "emailq.api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level="warning", loop="uvloop", http="httptools", access_log=False,
    )  # fmt: skip


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


@cli.group()
def keys() -> None:
    """Manage API keys (stored hashed beside the queue)."""


@keys.command("create")
@BROKER_OPTION
@click.option("--tenant", required=True)
@click.option("--name", default="", help="what the key is for")
@click.option("--trusted", is_flag=True, help="may set an explicit priority")
def keys_create(broker_url: str, tenant: str, name: str, trusted: bool) -> None:
    """Create a key; it is shown once and only its hash is stored."""
    from emailq.keys import open_key_store

    key, secret = open_key_store(broker_url).create(tenant, name, trusted)
    click.echo(f"created key {key.key_id} for tenant {tenant}:")
    click.echo(secret)


@keys.command("list")
@BROKER_OPTION
def keys_list(broker_url: str) -> None:
    """List keys (ids, tenants, state; never the secrets)."""
    from emailq.keys import open_key_store

    for key in open_key_store(broker_url).list():
        state = "active" if key.active else "revoked"
        trusted = " trusted" if key.trusted else ""
        click.echo(f"{key.key_id}  {key.tenant:<20} {state}{trusted}  {key.name}")


@keys.command("revoke")
@BROKER_OPTION
@click.argument("key_id")
def keys_revoke(broker_url: str, key_id: str) -> None:
    """Revoke a key by its id (takes effect within 5 seconds everywhere)."""
    from emailq.keys import open_key_store

    if not open_key_store(broker_url).revoke(key_id):
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


def stats_table(stats: Stats) -> Table:
    table = Table(title="emailq queue")
    table.add_column("lane", no_wrap=True)
    for state in State:
        table.add_column(state.value, justify="right")
    table.add_column("oldest ready", justify="right")
    for lane in LANE_ORDER:
        lane_stats = stats.lanes[lane]
        counts = [str(lane_stats.counts.get(state, 0)) for state in State]
        table.add_row(lane.value, *counts, f"{lane_stats.oldest_age:.1f} s")
    return table


def main() -> None:
    try:
        cli()
    except EmailqError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
