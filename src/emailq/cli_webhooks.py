"""``emailq webhooks``: the webhook dispatcher and sender, in a process of their own."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click

from emailq.cli import BROKER_URL, cli, open_deployment


@cli.command("webhooks")
@BROKER_URL
@click.pass_context
def webhooks(ctx: click.Context, /, **flags: Any) -> None:
    """Deliver event webhooks (email.sent, email.dead, batch.completed…) until SIGTERM/Ctrl-C."""
    from emailq.webhooks.service import run

    with open_deployment(ctx, flags) as deployment:
        if not deployment.settings.privacy.audit:
            click.echo(
                "warning: privacy.audit is off: no events are written, none are sent", err=True
            )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            settings = deployment.settings.webhooks
            click.echo("delivering webhooks (Ctrl-C to stop)")
            await run(deployment.broker, deployment.webhooks, settings, stop)

        asyncio.run(main())
