"""``emailq batch show|cancel|retry``: a guest list through a running API (``api.url``,
``api.key``), so the key's tenant scopes it as it scopes every route."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from emailq.cli import cli, load_settings, setting

if TYPE_CHECKING:  # imported when used: the client brings httpx, `emailq worker` needs none
    from emailq.client import Client


@cli.group()
def batch() -> None:
    """Follow a guest list sent with POST /v1/emails/batch."""


def _client(ctx: click.Context, flags: dict[str, Any]) -> Client:
    settings = load_settings(ctx, flags)
    if not settings.api.url or settings.api.key is None:
        raise click.UsageError("give --api-url and --api-key (or EMAILQ_API_URL, EMAILQ_API_KEY)")
    from emailq.client import Client

    return Client(settings.api.url, settings.api.key.get_secret_value())


def _echo(body: dict[str, Any]) -> None:
    click.echo(json.dumps(body, indent=2))


def _api_options(command: Any) -> Any:
    command = setting("--api-url")(command)
    return setting("--api-key")(command)


@batch.command("show")
@_api_options
@click.argument("batch_id")
@click.option("--state", help="list only recipients in this state (e.g. dead)")
@click.option("--limit", default=100, show_default=True, help="recipients per page")
@click.option("--after", help="the previous page's 'next'")
@click.pass_context
def show(
    ctx: click.Context, /, batch_id: str, state: str | None, limit: int, after: str | None,
    **flags: Any,
) -> None:  # fmt: skip
    """Counts per state and lane, and a page of recipients, as JSON."""
    with _client(ctx, flags) as client:
        _echo(_or_fail(lambda: client.batch(batch_id, state, limit, after)))


@batch.command("cancel")
@_api_options
@click.argument("batch_id")
@click.pass_context
def cancel(ctx: click.Context, /, batch_id: str, **flags: Any) -> None:
    """Cancel what no worker has taken yet."""
    with _client(ctx, flags) as client:
        _echo(_or_fail(lambda: client.cancel_batch(batch_id)))


@batch.command("retry")
@_api_options
@click.argument("batch_id")
@click.pass_context
def retry(ctx: click.Context, /, batch_id: str, **flags: Any) -> None:
    """Send again to the dead recipients, and only to them."""
    with _client(ctx, flags) as client:
        _echo(_or_fail(lambda: client.retry_batch(batch_id)))


def _or_fail(call: Any) -> dict[str, Any]:
    from emailq.client import ApiError

    try:
        return dict(call())
    except ApiError as error:
        raise click.ClickException(str(error)) from None
