"""Delivery through Resend's HTTP API, over one pooled ``httpx.AsyncClient``.

Resend takes JSON fields, not MIME, so each rendered message is parsed back into them
(:func:`to_resend_json`). Messages without attachments go up to 100 a call to
``POST /emails/batch`` in permissive mode, so one invalid email does not sink the rest;
messages with attachments go one by one to ``POST /emails`` (the batch endpoint takes none).

Every call carries an ``Idempotency-Key`` (Resend keeps them 24 h): a message's own key, or
``emailq/<message_id>``; for a batch, a hash of its sorted message ids. Batches are sent in
message-id order, so a retried batch of the same messages is the same request, which Resend
answers from its record instead of sending again. A call whose outcome is unknown (a
timeout, a broken connection, a 5xx) is asked again at once with the same key, a few times:
once its messages are back in the queue they may be retried in other groups, under other
keys, and Resend could then send one twice.

HTTP 2xx is accepted; 429, 5xx, timeouts, connection errors and a 409 for a concurrent
request with the same key are transient; any other 4xx is permanent. Reasons never hold the
API key or a full address.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import Message
from email.utils import getaddresses
from typing import Any, NotRequired, TypedDict

import httpx

from emailq.clock import Clock, now
from emailq.logs import mask_addresses
from emailq.providers.base import (
    Accepted,
    HealthCheck,
    Permanent,
    Provider,
    Rendered,
    SendGate,
    SendResult,
    Transient,
    Withheld,
)

MAX_BATCH = 100  # Resend's limit of emails in one batch call
MAX_KEY_LENGTH = 256  # Resend's limit on an Idempotency-Key

# Headers Resend writes from its own fields (or itself); anything else is passed on as is.
_OWN_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version"}
)
_MAX_REASON = 300
# Resend's 429s for a spent daily or monthly email quota; a retry waits at least this long.
_QUOTAS = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
# Resend's names for a key it will not take (403); other 403s are about the email itself.
_KEY_REFUSED = frozenset({"invalid_api_key", "restricted_api_key", "missing_api_key"})
QUOTA_RETRY_FLOOR = 3600.0
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_TAG = 256  # characters in a tag's name or value
_FOLD = re.compile(r"\r?\n(?=[ \t])")  # unfolding removes the line break, not the space


class ResendAttachment(TypedDict):
    content: str  # base64
    filename: str
    content_type: NotRequired[str]
    content_id: NotRequired[str]  # for inline images, referenced as cid:<content_id>


# The functional form because "from" is a keyword.
ResendEmail = TypedDict(
    "ResendEmail",
    {
        "from": str,
        "to": list[str],
        "subject": str,
        "cc": NotRequired[list[str]],
        "bcc": NotRequired[list[str]],
        "reply_to": NotRequired[list[str]],
        "text": NotRequired[str],
        "html": NotRequired[str],
        "headers": NotRequired[dict[str, str]],
        "attachments": NotRequired[list[ResendAttachment]],
        "tags": NotRequired[list[dict[str, str]]],
    },
)


@dataclass(frozen=True, slots=True)
class ResendSettings:
    api_key: str = field(repr=False)  # never in a repr, a log line or a reason
    base_url: str = "https://api.resend.com"
    timeout: float = 30.0
    max_batch: int = MAX_BATCH
    max_connections: int = 10
    # A call that timed out, broke off or got a 5xx may have been carried out. Asking again
    # at once with the same Idempotency-Key gets Resend's recorded answer; left to the
    # queue, the messages would come back in other groups, under other batch keys, and
    # could be sent twice.
    unsure_retries: int = 2
    unsure_backoff: float = 0.5  # seconds before the first of those retries, then doubling

    def __post_init__(self) -> None:
        if any(not char.isprintable() or char.isspace() for char in self.api_key):
            raise ValueError("the API key must be printable characters without spaces")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be between 1 and {MAX_BATCH}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The last ``ratelimit-*`` headers Resend sent, for the rate limiter to read."""

    limit: int | None
    remaining: int | None
    reset: float | None  # seconds from seen_at until the window resets
    seen_at: float


def to_resend_json(rendered: Rendered) -> ResendEmail:
    """The JSON fields of ``POST /emails`` for a rendered message, read back from its MIME.

    Bcc is the envelope recipients that are in neither To nor Cc. Raises ``ValueError`` when
    the message has no From or To address (the message is unusable, not the call).
    """
    # Why compat32 and our own header decoding: the default policy parses every header into
    # objects, about 3 ms a message, 15 times this; 100 of those would stall the event loop.
    parsed = email.message_from_bytes(rendered.data, policy=email.policy.compat32)
    sender, to, cc = _addresses(parsed, "From"), _addresses(parsed, "To"), _addresses(parsed, "Cc")
    if not sender or not to:
        raise ValueError("the message has no From or no To address")
    result: ResendEmail = {
        "from": str(sender[0]),
        "to": [str(a) for a in to],
        "subject": _header_text(parsed.get("Subject", "")),
    }
    if cc:
        result["cc"] = [str(a) for a in cc]
    listed = {a.addr_spec.lower() for a in (*to, *cc)}
    if bcc := [r for r in dict.fromkeys(rendered.recipients) if r.lower() not in listed]:
        result["bcc"] = bcc
    if reply_to := _addresses(parsed, "Reply-To"):
        result["reply_to"] = [str(a) for a in reply_to]
    if headers := _custom_headers(parsed):
        result["headers"] = headers
    _add_contents(result, parsed)
    if tags := _resend_tags(rendered.tags):
        result["tags"] = tags
    return result


def _resend_tags(tags: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Tags as Resend takes them: names and values of ASCII letters, digits, ``_`` and
    ``-``, so any other character becomes ``_`` (``wedding.id`` → ``wedding_id``); a tag
    with an empty value is left out. Resend refuses the whole email over a bad tag."""
    result = []
    for name, value in tags:
        if value:
            result.append({"name": _TAG_UNSAFE.sub("_", name)[:MAX_TAG],
                           "value": _TAG_UNSAFE.sub("_", value)[:MAX_TAG]})  # fmt: skip
    return result


def idempotency_key(message: Rendered) -> str:
    """The key of a single send: the message's own, else ``emailq/<message_id>``."""
    key = message.idempotency_key or f"emailq/{message.message_id}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "emailq/" + hashlib.sha256(key.encode()).hexdigest()[:32]


def batch_idempotency_key(message_ids: Sequence[str]) -> str:
    """The key of a batch: the same set of messages gives the same key, in any order."""
    digest = hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()
    return f"emailq-batch/{digest[:32]}"


class ResendProvider(Provider):
    name = "resend"
    retries_unsure = True  # ResendSettings.unsure_retries, under the call's own key

    def __init__(self, settings: ResendSettings, *, clock: Clock = now) -> None:
        self.settings = settings
        self.ratelimit: RateLimit | None = None
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        results: list[SendResult] = [Transient("not sent")] * len(batch)
        singles: list[_Item] = []
        batchable: list[_Item] = []
        for index, message in enumerate(batch):
            try:
                body = to_resend_json(message)
            except (ValueError, LookupError) as error:
                results[index] = Permanent(self._clean(f"unreadable message: {error}"))
                gate.done(index, results[index])
                continue
            item = _Item(index, message, body)
            (singles if "attachments" in body else batchable).append(item)
        chunks = list(_chunks(sorted(batchable, key=lambda i: i.message.message_id),
                              self.settings.max_batch))  # fmt: skip
        singles += [chunk[0] for chunk in chunks if len(chunk) == 1]
        calls = [self._gated(gate, [item], self._send_one) for item in singles]
        calls += [self._gated(gate, chunk, self._send_chunk) for chunk in chunks if len(chunk) > 1]
        for outcomes in await asyncio.gather(*calls):
            for index, result in outcomes:
                results[index] = result
        return results

    async def _gated(
        self,
        gate: SendGate,
        items: list[_Item],
        call: Callable[[list[_Item]], Awaitable[list[tuple[int, SendResult]]]],
    ) -> list[tuple[int, SendResult]]:
        """One HTTP call for the items the gate still lets go, asked right before it is made;
        each outcome reported as soon as the call answers."""
        allowed = [item for item in items if await gate.may_send(item.message.message_id)]
        outcomes: list[tuple[int, SendResult]] = [
            (item.index, Withheld("the lease may have lapsed before the call"))
            for item in items if item not in allowed
        ]  # fmt: skip
        if allowed:
            outcomes += await call(allowed)
        for index, result in outcomes:
            gate.done(index, result)
        return outcomes

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _send_one(self, items: list[_Item]) -> list[tuple[int, SendResult]]:
        [item] = items
        outcome = await self._post("/emails", item.body, idempotency_key(item.message))
        if isinstance(outcome, httpx.Response):
            return [(item.index, Accepted(_id_of(_json(outcome))))]
        return [(item.index, outcome)]

    async def _send_chunk(self, chunk: list[_Item]) -> list[tuple[int, SendResult]]:
        if len(chunk) == 1:  # the gate withheld the rest: a single email needs no batch call
            return await self._send_one(chunk)
        key = batch_idempotency_key([item.message.message_id for item in chunk])
        outcome = await self._post("/emails/batch", [item.body for item in chunk], key, batch=True)
        if not isinstance(outcome, httpx.Response):
            return [(item.index, outcome) for item in chunk]
        results = self._batch_results(_json(outcome), len(chunk))
        return [(item.index, result) for item, result in zip(chunk, results, strict=True)]

    async def _post(
        self, path: str, payload: object, key: str, *, batch: bool = False
    ) -> httpx.Response | Transient | Permanent:
        """The call, asked again with the same key while its outcome is unknown."""
        outcome = await self._post_once(path, payload, key, batch)
        for retry in range(self.settings.unsure_retries):
            if not (isinstance(outcome, Transient) and outcome.unsure):
                break
            await asyncio.sleep(self.settings.unsure_backoff * 2**retry)
            outcome = await self._post_once(path, payload, key, batch)
        return outcome

    async def _post_once(
        self, path: str, payload: object, key: str, batch: bool
    ) -> httpx.Response | Transient | Permanent:
        headers = {"Idempotency-Key": key}
        if batch:
            headers["x-batch-validation"] = "permissive"
        try:
            response = await self._http().post(path, json=payload, headers=headers)
        except httpx.TimeoutException as error:
            # The call may have gone through: the retry's idempotency key makes that safe.
            return Transient(
                f"timeout after {self.settings.timeout:g}s: {type(error).__name__}", unsure=True
            )
        except httpx.LocalProtocolError as error:
            # Ours, not the network's: the same request would fail again. No str(error): it
            # can quote a header value.
            return Permanent(f"request could not be sent: {type(error).__name__}")
        except httpx.TransportError as error:  # perhaps after the request went out
            reason = self._clean(f"connection: {type(error).__name__}: {error}")
            refused = isinstance(error, httpx.ConnectError)  # Resend unreachable: not the mail
            return Transient(reason, unsure=not refused, provider_down=refused)
        self._note_ratelimit(response.headers)
        if response.is_success:
            return response
        return self._classify(response)

    async def check(self) -> HealthCheck:
        """``GET /domains``: authenticated, sends nothing. 401/403: the key is refused."""
        try:
            response = await self._http().get("/domains")
        except httpx.HTTPError as error:
            return HealthCheck(ok=False, reason=f"{type(error).__name__}: {error}")
        status = response.status_code
        if status in (401, 403):
            return HealthCheck(ok=False, reason=f"{status}: key refused", credentials_refused=True)
        if status >= 500:
            return HealthCheck(ok=False, reason=f"HTTP {status}")
        return HealthCheck(ok=True)  # 2xx, or 429: it answers and knows the key

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self.settings.max_connections,
                max_keepalive_connections=self.settings.max_connections,
            )
            self._client = httpx.AsyncClient(
                base_url=self.settings.base_url,
                headers=self._headers(),
                timeout=httpx.Timeout(self.settings.timeout),
                limits=limits,
            )
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "emailq"}
        if self.settings.api_key:  # none: Resend answers 401 missing_api_key, a clear reason
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return headers

    def _classify(self, response: httpx.Response) -> Transient | Permanent:
        status = response.status_code
        body = _json(response)
        name = str(body.get("name", "")) if isinstance(body, dict) else ""
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
        reason = self._clean(f"{status} {name or response.reason_phrase}: {message}".rstrip(": "))
        # A spent quota does not clear in seconds: retried at the usual pace, a message
        # would use up its attempts within minutes and land in the dead letters.
        if name in _QUOTAS:
            return Transient(
                reason, max(QUOTA_RETRY_FLOOR, self._retry_after(response.headers) or 0)
            )
        # 409 concurrent_idempotent_requests: the first call with this key is still running.
        if status in (408, 429) or status >= 500 or name == "concurrent_idempotent_requests":
            # 429 and 408: not carried out; a 5xx or a call still running: perhaps
            unsure = status >= 500 or name == "concurrent_idempotent_requests"
            return Transient(reason, self._retry_after(response.headers), unsure=unsure)
        if status == 401 or name in _KEY_REFUSED:
            # A missing, mistyped or revoked key refuses every email alike: the provider is
            # unusable until an operator fixes it, and no email's attempts are spent on it.
            return Transient(reason, provider_down=True, credentials_refused=True)
        if 400 <= status < 500:
            return Permanent(reason)
        return Transient(f"unexpected HTTP status {status}")

    def _batch_results(self, body: Any, size: int) -> list[SendResult]:
        """Map a permissive batch answer onto the request's emails.

        ``errors`` name the invalid emails by index; ``data`` holds the ids of the others,
        in order (or one entry per email, if it lists every one).
        """
        if not isinstance(body, dict):
            return [Accepted("")] * size  # a 2xx without a readable body: Resend took them
        errors = {
            error["index"]: str(error.get("message", ""))
            for error in body.get("errors") or []
            if isinstance(error, dict) and isinstance(error.get("index"), int)
        }
        ids = [_id_of(entry) for entry in body.get("data") or []]
        if len(ids) != size:
            ids = _spread(ids, [i for i in range(size) if i not in errors], size)
        return [
            Permanent(self._clean(f"rejected in batch: {errors[i]}"))
            if i in errors else Accepted(ids[i])
            for i in range(size)
        ]  # fmt: skip

    def _note_ratelimit(self, headers: httpx.Headers) -> None:
        if not any(name in headers for name in ("ratelimit-limit", "ratelimit-remaining")):
            return
        self.ratelimit = RateLimit(
            limit=_int(headers.get("ratelimit-limit")),
            remaining=_int(headers.get("ratelimit-remaining")),
            reset=_seconds(headers.get("ratelimit-reset")),
            seen_at=self._clock(),
        )

    @staticmethod
    def _retry_after(headers: httpx.Headers) -> float | None:
        """Seconds to wait: ``retry-after``, else ``ratelimit-reset``."""
        for name in ("retry-after", "ratelimit-reset"):
            if (seconds := _seconds(headers.get(name))) is not None:
                return seconds
        return None

    def _clean(self, text: str) -> str:
        """A reason fit for logs: no API key, no full address, bounded length."""
        if self.settings.api_key:
            text = text.replace(self.settings.api_key, "[api key]")
        text = mask_addresses(text)
        return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


@dataclass(frozen=True, slots=True)
class _Item:
    index: int  # position in the batch handed to send_batch
    message: Rendered
    body: ResendEmail


def _chunks(items: list[_Item], size: int) -> Iterator[list[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _header_text(value: str) -> str:
    """An unstructured header's text: unfolded, RFC 2047 encoded-words decoded."""
    unfolded = _FOLD.sub("", str(value))
    if "=?" not in unfolded:
        return unfolded
    try:
        return str(make_header(decode_header(unfolded)))
    except (HeaderParseError, LookupError, UnicodeError):  # malformed: keep it as sent
        return unfolded


def _addresses(parsed: Message, name: str) -> list[Address]:
    values = parsed.get_all(name) or []
    pairs = getaddresses([_FOLD.sub("", str(value)) for value in values])
    return [_address(display, addr) for display, addr in pairs if "@" in addr]


def _address(display: str, addr: str) -> Address:
    username, _, domain = addr.rpartition("@")
    return Address(display_name=_header_text(display), username=username, domain=domain)


def _custom_headers(parsed: Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in parsed.items():
        lowered = name.lower()
        if lowered in _OWN_HEADERS or lowered.startswith("content-") or lowered in seen:
            continue
        seen.add(lowered)
        headers[name] = _header_text(value)
    return headers


def _add_contents(result: ResendEmail, parsed: Message) -> None:
    """The first text/plain and text/html bodies; every other leaf part is an attachment."""
    attachments: list[ResendAttachment] = []
    for part in _leaves(parsed):
        kind = part.get_content_type()
        if kind == "text/plain" and "text" not in result and _is_body(part):
            result["text"] = _text(part)
        elif kind == "text/html" and "html" not in result and _is_body(part):
            result["html"] = _text(part)
        else:
            attachments.append(_attachment(part))
    if attachments:
        result["attachments"] = attachments


def _leaves(message: Message, top: bool = True) -> Iterator[Message]:
    """The parts that are not made of parts. A message/* part is one: a forwarded email is
    an attachment (message.walk() would go into it, and take its text for the body)."""
    if message.is_multipart() and (top or message.get_content_maintype() != "message"):
        for part in message.get_payload():
            if isinstance(part, Message):
                yield from _leaves(part, top=False)
    else:
        yield message


def _is_body(part: Message) -> bool:
    return (
        part.get_content_disposition() != "attachment"
        and part.get_filename() is None
        and "Content-ID" not in part
    )


def _text(part: Message) -> str:
    data = _payload(part)
    try:
        text = data.decode(part.get_content_charset() or "us-ascii", errors="replace")
    except LookupError:  # a charset Python does not know
        text = data.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def _payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    held = part.get_payload()  # a message/* part: the message(s) it holds
    if not isinstance(held, list):
        return b""
    return b"".join(message.as_bytes() for message in held if isinstance(message, Message))


def _attachment(part: Message) -> ResendAttachment:
    attachment: ResendAttachment = {
        "content": base64.b64encode(_payload(part)).decode("ascii"),
        "filename": part.get_filename() or "attachment",
        "content_type": part.get_content_type(),
    }
    if content_id := _FOLD.sub("", str(part.get("Content-ID", ""))).strip().strip("<>"):
        attachment["content_id"] = content_id
    return attachment


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
        return None


def _id_of(entry: Any) -> str:
    return str(entry.get("id", "")) if isinstance(entry, dict) else ""


def _spread(ids: list[str], valid: list[int], size: int) -> list[str]:
    """Ids listed for the valid emails only, laid out by request index ("" if short)."""
    laid_out = [""] * size
    for index, provider_id in zip(valid, ids, strict=False):
        laid_out[index] = provider_id
    return laid_out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # an HTTP-date retry-after: Resend sends seconds, so fall through
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None
