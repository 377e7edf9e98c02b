"""Guest-list sends: one template, up to 1,000 recipients with their own variables.

Templates are Jinja2 in its sandbox (no access to Python internals from a template), with
limits on the size, steps and time rendering may take (:mod:`emailq.api.sandbox`), and
HTML autoescaped so a guest's name cannot inject markup. Every recipient is rendered and
validated before anything is queued; any error rejects the whole batch, listing each
problem as ``recipients.<index>.<field>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emailq.api.nesting import MAX_DEPTH, nested_deeper, too_deep_error
from emailq.api.sandbox import MAX_FIELD_CHARS, Budget, LimitedSandbox, render_field
from emailq.errors import FieldError, InvalidEmail
from emailq.message import Email, parse_shared, personalised

MAX_RECIPIENTS = 1000
TEMPLATED = ("subject", "text", "html")

_ENV = LimitedSandbox(autoescape=False, undefined=StrictUndefined)


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # no addresses in logs
    to: str | dict[str, Any] | list[Any]
    variables: dict[str, Any] = {}
    idempotency_key: str | None = None


class BatchRequest(BaseModel):
    """``template`` holds every email field but ``to``; subject, text and html may use
    ``{{ variables }}``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    template: dict[str, Any]
    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)


def parse_batch(
    data: bytes, scope: Callable[[dict[str, Any]], None], idempotency_key: str | None = None
) -> list[Email]:
    """Every recipient's email, or InvalidEmail listing every error in the batch.

    ``scope`` binds the fields the caller's API key decides (the tenant) on the template.
    With a request ``idempotency_key``, a recipient without a key of its own gets
    ``<key>/<index>``, so a retried batch request returns the first ids, queueing nothing.
    """
    try:
        batch = BatchRequest.model_validate_json(data)
    except ValidationError as error:
        raise InvalidEmail([
            FieldError(".".join(str(p) for p in e["loc"]), e["msg"])
            for e in error.errors(include_input=False)
        ]) from None  # fmt: skip
    _check_nesting(batch)
    template = dict(batch.template)
    scope(template)
    if "to" in template:
        raise InvalidEmail([FieldError("template.to", "recipients come from 'recipients'")])
    if "idempotency_key" in template:  # one key for every guest would keep only the first
        message = "give each recipient its own idempotency_key, or the Idempotency-Key header"
        raise InvalidEmail([FieldError("template.idempotency_key", message)])
    compiled = _compile(template)
    errors = list(compiled) if isinstance(compiled, tuple) else []
    try:
        shared = parse_shared(template)  # every field but the personal ones, checked once
    except InvalidEmail as error:
        errors += [FieldError(f"template.{e.field}", e.message) for e in error.errors]
    if errors:
        raise InvalidEmail(errors)
    assert not isinstance(compiled, tuple)
    return _personalise_all(batch.recipients, shared, compiled, idempotency_key)


def _personalise_all(
    recipients: list[Recipient], shared: Email, compiled: Template, idempotency_key: str | None
) -> list[Email]:
    emails: list[Email] = []
    errors: list[FieldError] = []
    budget = Budget()  # the whole list's time and size (see emailq.api.sandbox)
    for index, recipient in enumerate(recipients):
        key = recipient.idempotency_key
        if key is None and idempotency_key:
            key = f"{idempotency_key}/{index}"
        try:
            emails.append(_personalise(shared, compiled, recipient, key, budget))
        except InvalidEmail as error:
            errors += [FieldError(f"recipients.{index}.{e.field}", e.message) for e in error.errors]
            if budget.out_of_time:
                break  # every later guest would be refused alike: one error says it
    if errors:
        raise InvalidEmail(errors)
    return emails


def _check_nesting(batch: BatchRequest) -> None:
    """The free-form parts (template, to, variables) within the body's nesting cap."""
    # The template and the recipients' list are both one level into the body; the list
    # of [to, variables] pairs below stands for that list of recipient objects.
    recipients = [[recipient.to, recipient.variables] for recipient in batch.recipients]
    if nested_deeper(batch.template, MAX_DEPTH - 1) or nested_deeper(recipients, MAX_DEPTH - 1):
        raise InvalidEmail([too_deep_error()])


def _compile(template: dict[str, Any]) -> Template | tuple[FieldError, ...]:
    """The templated fields as one template, or the errors, each naming its field."""
    errors: list[FieldError] = []
    if template.get("subject") is None:
        errors.append(FieldError("template.subject", "required"))
    if template.get("text") is None and template.get("html") is None:
        errors.append(FieldError("template.text", "text or html is required"))
    sources = tuple(template.get(field) for field in TEMPLATED)
    for field, source in zip(TEMPLATED, sources, strict=True):
        if source is not None and not isinstance(source, str):
            errors.append(FieldError(f"template.{field}", "must be a string"))
        elif source is not None and len(source) > MAX_FIELD_CHARS:  # sandbox.render_field
            message = f"must be at most {MAX_FIELD_CHARS} characters"
            errors.append(FieldError(f"template.{field}", message))
    if errors:
        return tuple(errors)
    if sum(len(source or "") for source in sources) <= MAX_CACHED_SOURCE:
        return _compiled_cached(sources)
    return _compiled(sources)


def _compiled(sources: tuple[str | None, ...]) -> Template | tuple[FieldError, ...]:
    """Each field is compiled alone first: an error then names its field, and a field
    that defines a block (which would set another field, or escape the html field's
    autoescape) is refused."""
    errors: list[FieldError] = []
    for field, source in zip(TEMPLATED, sources, strict=True):
        if source is None:
            continue
        try:
            alone = _ENV.from_string(source)
        except TemplateError as error:
            errors.append(FieldError(f"template.{field}", f"template error: {error}"))
            continue
        if alone.blocks:
            errors.append(FieldError(f"template.{field}", "must not use {% block %}"))
    if errors:
        return tuple(errors)
    return _ENV.from_string(_combined(sources))


# Why a cache: compiling costs milliseconds (about 10 µs a guest on a 500-guest list), and
# a platform sends the same invitation template for wedding after wedding. Templates are
# safe to share between threads: every render has its own context. Only small sources are
# kept, so the cache stays within a few MB.
MAX_CACHED_SOURCE = 64 * 1024
_compiled_cached = functools.lru_cache(maxsize=64)(_compiled)


def _combined(sources: tuple[str | None, ...]) -> nodes.Template:
    """One template whose blocks are the fields: each guest then costs one Jinja context
    instead of three. HTML is autoescaped inside its own block.

    Why from the fields' syntax trees and not their text: joined as text, a field could
    reach into the next (one that ends in "{#" opens a comment over it, one that ends in
    "{" makes the next tag's "{%" a "{{%": a 500 until the issue-11 fuzz test found it).
    """
    blocks: list[nodes.Node] = []
    for field, source in zip(TEMPLATED, sources, strict=True):
        if source is None:
            continue
        body = _ENV.parse(source).body  # parsed again: compiling changes the tree
        if field == "html":
            autoescape = [nodes.Keyword("autoescape", nodes.Const(True))]
            body = [nodes.Scope([nodes.ScopedEvalContextModifier(autoescape, body)])]
        blocks.append(nodes.Block(field, body, False, False))
    return nodes.Template(blocks)


def _personalise(
    shared: Email,
    combined: Template,
    guest: Recipient,
    idempotency_key: str | None,
    budget: Budget,
) -> Email:
    fields: dict[str, Any] = {"to": guest.to, "idempotency_key": idempotency_key}
    errors: list[FieldError] = []
    context = combined.new_context(guest.variables)
    budget.next_guest()
    for name, block in combined.blocks.items():  # the templated fields, and no other
        try:
            fields[name] = render_field(block, context, budget)
        except Exception as error:
            # e.g. a variable this guest does not have, or {{ a + b }} with text and a number
            errors.append(FieldError(name, f"template error: {type(error).__name__}: {error}"))
    if errors:
        raise InvalidEmail(errors)
    return personalised(shared, fields)
