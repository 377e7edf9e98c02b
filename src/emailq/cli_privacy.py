"""The data-protection commands of ``emailq``: audit, export, erase, purge, rotate-keys.

They parse and call the deployment, as every command does; they live apart from cli.py
only to keep each module short.
"""

from __future__ import annotations

import json
from typing import Any

import click

from emailq.cli import BROKER_URL, cli, open_deployment, since_timestamp
from emailq.errors import ValidationError


@cli.command()
@BROKER_URL
@click.argument("message_id")
@click.pass_context
def audit(ctx: click.Context, /, message_id: str, **flags: Any) -> None:
    """One message's audit trail, one JSON event per line, oldest first."""
    with open_deployment(ctx, flags) as deployment:
        events = deployment.broker.events(message_id)
    if not events:
        raise click.ClickException(f"no audit events for {message_id}")
    for event in events:
        click.echo(event.to_json())


@cli.command()
@BROKER_URL
@click.option("--recipient", help="what is held about this address (GDPR art. 15), as JSON")
@click.option("--tenant", help="with --recipient: only this tenant's; alone: its audit events")
@click.option("--since", default="1d", show_default=True, help="30m, 2h, 1d or ISO 8601")
@click.option("--until", help="default: now")
@click.pass_context
def export(
    ctx: click.Context, /, recipient: str | None, tenant: str | None, since: str,
    until: str | None, **flags: Any,
) -> None:  # fmt: skip
    """What is held about an address (--recipient), or a tenant's audit events for a time
    range as JSON lines (--tenant)."""
    if not recipient and not tenant:
        raise click.UsageError("give --recipient ADDRESS or --tenant T")
    with open_deployment(ctx, flags) as deployment:
        if recipient:
            try:
                held = deployment.export(recipient, tenant)
            except ValidationError as error:
                raise click.BadParameter(error.message, param_hint="--recipient") from None
            click.echo(json.dumps(held, indent=2, default=str))
            return
        assert tenant is not None
        now = deployment.broker.now()
        start = since_timestamp(since, now)
        end = now if until is None else since_timestamp(until, now)
        for event in deployment.broker.tenant_events(tenant, start, end):
            click.echo(event.to_json())


@cli.command()
@BROKER_URL
@click.option("--recipient", required=True, help="the address to erase")
@click.option("--tenant", help="only this tenant's mail (default: every tenant's)")
@click.pass_context
def erase(ctx: click.Context, /, recipient: str, tenant: str | None, **flags: Any) -> None:
    """Erase an address (GDPR art. 17): cancel queued mail to it, remove it and the bodies
    naming it; the audit trail keeps a keyed hash. Prints the counts as JSON."""
    with open_deployment(ctx, flags) as deployment:
        try:
            counts = deployment.erase(recipient, tenant)
        except ValidationError as error:
            raise click.BadParameter(error.message, param_hint="--recipient") from None
    click.echo(json.dumps(counts.as_dict()))


@cli.command()
@BROKER_URL
@click.option("--dry-run", is_flag=True, help="show what would go, delete nothing")
@click.pass_context
def purge(ctx: click.Context, /, dry_run: bool, **flags: Any) -> None:
    """Delete what is past its retention: finished records, dead bodies, audit events."""
    with open_deployment(ctx, flags) as deployment:
        if dry_run:
            click.echo(json.dumps({"would_purge": deployment.broker.purge_preview()}))
        else:
            click.echo(json.dumps({"purged": deployment.broker.purge_expired()}))


@cli.command("rotate-keys")
@BROKER_URL
@click.pass_context
def rotate_keys(ctx: click.Context, /, **flags: Any) -> None:
    """Re-seal every stored payload with the first of EMAILQ_ENCRYPTION_KEYS."""
    with open_deployment(ctx, flags) as deployment:
        if deployment.broker.options.sealer is None:
            raise click.UsageError("set EMAILQ_ENCRYPTION_KEYS first")
        count = deployment.broker.reseal()
    click.echo(f"re-sealed {count} payload{'' if count == 1 else 's'}")
