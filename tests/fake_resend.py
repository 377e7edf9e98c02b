"""A local stand-in for Resend's email API, for tests: real HTTP on 127.0.0.1, stdlib only.

It speaks the documented contract (https://resend.com/docs/api-reference):

- ``POST /emails`` and ``POST /emails/batch`` (at most 100 emails, no attachments), with
  ``x-batch-validation: strict`` (the default: one invalid email fails the call) or
  ``permissive`` (the valid ones are sent; ``errors`` lists the others by index).
- ``Authorization: Bearer <key>``: none gives 401 ``missing_api_key``, a wrong one 403
  ``invalid_api_key``. Errors have Resend's shape ``{"statusCode", "name", "message"}``.
- Required fields ``from``, ``to`` (at most 50), ``subject`` and ``html`` or ``text``: 422
  ``missing_required_field`` / ``validation_error`` otherwise. Stricter than Resend in one
  way on purpose: an unknown field is a ``validation_error``, so a typo in a provider shows.
- ``Idempotency-Key`` (1-256 characters, else 400 ``invalid_idempotency_key``): the same key
  and body again gets the first answer and sends nothing; the same key with another body is
  409 ``invalid_idempotent_request``; while the first is still in progress, 409
  ``concurrent_idempotent_requests``.
- ``ratelimit-limit/remaining/reset`` headers on every answer, over one-second windows
  (Resend's default is 2 requests a second per team). With ``enforce_rate_limit`` a request
  over the limit gets 429 ``rate_limit_exceeded`` and ``retry-after``.

Faults for tests: :meth:`FakeResend.fail_next` answers the next requests with an error
status, :meth:`FakeResend.hang_next` holds them past any client timeout. Every email it
accepts is in :attr:`FakeResend.sent`, so tests can assert that each went out exactly once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

MAX_BATCH = 100
MAX_TO = 50
MAX_KEY = 256
DEFAULT_RATE_LIMIT = 2  # requests a second per team

_FIELDS = frozenset(
    {"from", "to", "subject", "cc", "bcc", "reply_to", "html", "text", "headers",
     "attachments", "tags", "scheduled_at"}
)  # fmt: skip
_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")

Problem = tuple[str, str]  # (error name, message)


@dataclass(frozen=True, slots=True)
class SentEmail:
    """One email the fake accepted: what a real Resend would deliver."""

    id: str
    email: dict[str, Any]
    idempotency_key: str | None
    endpoint: str


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the fake saw it, with the status it answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any
    status: int
    replayed: bool = False  # answered from the idempotency record


@dataclass(slots=True)
class _Fault:
    status: int = 0  # 0: hang instead of answering with an error
    name: str = ""
    message: str = ""
    retry_after: float | None = None
    seconds: float = 0.0  # for a hang: how long at most
    sent: bool = True  # for a hang: process the request first (the answer is what is lost)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


@dataclass(slots=True)
class _Record:
    fingerprint: str
    answer: _Answer | None = None  # None while the first request is in progress


class FakeResend:
    """Use as a context manager; :attr:`url` is the base URL to give the provider."""

    def __init__(
        self,
        api_key: str = "re_test_0123456789abcdef",
        *,
        rate_limit: int = DEFAULT_RATE_LIMIT,
        enforce_rate_limit: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.enforce_rate_limit = enforce_rate_limit
        self.sent: list[SentEmail] = []
        self.calls: list[Call] = []
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._keys: dict[str, _Record] = {}
        self._window = (-1, 0)  # (second, requests in it)
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- running -------------------------------------------------------------------------

    def __enter__(self) -> FakeResend:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-resend"
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release.set()  # let hung handlers finish
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    @property
    def url(self) -> str:
        assert self._server is not None, "use FakeResend as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- faults --------------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int,
        *,
        name: str = "",
        message: str = "",
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (e.g. 429 with retry-after, 500).

        Nothing is sent for them. ``headers`` are added to the answer.
        """
        default = {429: "rate_limit_exceeded", 500: "internal_server_error"}.get(status, "error")
        message = message or f"Injected {status}."
        fault = _Fault(status, name or default, message, retry_after, headers=headers or {})
        with self._lock:
            self._faults += [fault] * count

    def hang_next(self, count: int, *, seconds: float = 30.0, sent: bool = True) -> None:
        """Hold the next ``count`` requests up to ``seconds`` (or until :meth:`release`).

        ``sent=True``: the request is processed first, so the emails go out and only the
        answer is late (a retry with the same key gets the recorded answer). ``sent=False``:
        the request holds its idempotency key while it hangs, then is processed.
        """
        with self._lock:
            self._faults += [_Fault(seconds=seconds, sent=sent)] * count

    def release(self) -> None:
        """End every hang now and from now on."""
        self._release.set()

    # -- reading -------------------------------------------------------------------------

    def sent_ids(self) -> list[str]:
        with self._lock:
            return [email.id for email in self.sent]

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    # -- serving (called from handler threads) ---------------------------------------------

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _ratelimit(self) -> tuple[dict[str, str], bool]:
        """This request's ratelimit headers, and whether it is over the limit."""
        current = self._clock()
        second = math.floor(current)
        with self._lock:
            start, used = self._window
            used = used + 1 if start == second else 1
            self._window = (second, used)
        reset = max(1, math.ceil(second + 1 - current))
        headers = {
            "ratelimit-limit": str(self.rate_limit),
            "ratelimit-remaining": str(max(0, self.rate_limit - used)),
            "ratelimit-reset": str(reset),
        }
        return headers, used > self.rate_limit

    def _answer(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[_Answer, _Fault | None]:
        """The answer to one request, and the hang to do before sending it, if any."""
        fault = self._take_fault()
        if fault is not None and fault.status:
            return _fault_answer(fault), None
        problem = _auth_problem(headers.get("authorization"), self.api_key)
        if problem is not None:
            return _error(problem[0], *problem[1]), None
        limits, over = self._ratelimit()
        if over and self.enforce_rate_limit:
            message = f"Too many requests. You can only make {self.rate_limit} requests per second."
            answer = _error(429, "rate_limit_exceeded", message)
            answer.headers.update(limits)
            answer.headers["retry-after"] = limits["ratelimit-reset"]
            return answer, None
        answer = self._route(path, headers, raw, fault)
        answer.headers.update(limits)
        return answer, fault

    def _route(
        self, path: str, headers: dict[str, str], raw: bytes, hang: _Fault | None
    ) -> _Answer:
        if path not in ("/emails", "/emails/batch"):
            return _error(404, "not_found", "The requested endpoint does not exist.")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "validation_error", "The request body is not valid JSON.")
        key = headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_KEY:
            return _error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        if key is None:
            return self._process(path, headers, body, None, hang)
        return self._idempotent(path, headers, body, key, hang)

    def _idempotent(
        self, path: str, headers: dict[str, str], body: Any, key: str, hang: _Fault | None
    ) -> _Answer:
        fingerprint = hashlib.sha256((path + json.dumps(body, sort_keys=True)).encode()).hexdigest()
        with self._lock:
            record = self._keys.get(key)
            if record is None:
                self._keys[key] = _Record(fingerprint)
        if record is not None:
            return _replay(record, fingerprint)
        answer = self._process(path, headers, body, key, hang)
        with self._lock:
            if 200 <= answer.status < 300:
                self._keys[key].answer = answer
            else:
                del self._keys[key]  # only a success is remembered; a fixed request may retry
        return answer

    def _process(
        self, path: str, headers: dict[str, str], body: Any, key: str | None, hang: _Fault | None
    ) -> _Answer:
        if hang is not None and not hang.sent:
            self._release.wait(hang.seconds)
        if path == "/emails":
            problem = _problem(body, in_batch=False)
            if problem is not None:
                return _error(422, *problem)
            return _Answer(200, {"id": self._record(body, key, path)})
        return self._batch(body, key, headers.get("x-batch-validation", "strict"))

    def _batch(self, body: Any, key: str | None, mode: str) -> _Answer:
        if not isinstance(body, list) or not 1 <= len(body) <= MAX_BATCH:
            message = f"The body must be an array of 1 to {MAX_BATCH} emails."
            return _error(422, "validation_error", message)
        problems = {i: p for i, email in enumerate(body) if (p := _problem(email, in_batch=True))}
        if problems and mode != "permissive":
            index, (name, message) = next(iter(problems.items()))
            return _error(422, name, f"emails[{index}]: {message}")
        ids = [
            {"id": self._record(email, key, "/emails/batch")}
            for i, email in enumerate(body)
            if i not in problems
        ]
        errors = [{"index": i, "message": message} for i, (_, message) in problems.items()]
        return _Answer(
            200, {"data": ids, "errors": errors} if mode == "permissive" else {"data": ids}
        )

    def _record(self, email: dict[str, Any], key: str | None, endpoint: str) -> str:
        email_id = str(uuid.uuid4())
        with self._lock:
            self.sent.append(SentEmail(email_id, email, key, endpoint))
        return email_id

    def _log(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the provider's pool expects
    timeout = 10  # an idle kept-alive connection frees its thread
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        fake: FakeResend = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = self.path.split("?", 1)[0]
        answer, hang = fake._answer(path, headers, raw)
        fake._log(Call("POST", path, headers, _loads(raw), answer.status, answer.replayed))
        if hang is not None and hang.sent:
            fake._release.wait(hang.seconds)  # sent, but the answer comes too late
        self._send(answer)

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(_error(405, "method_not_allowed", "Method is not allowed for the path."))

    def _send(self, answer: _Answer) -> None:
        data = json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (timed out) meanwhile

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not access logs


# -- answers ---------------------------------------------------------------------------------


def _error(status: int, name: str, message: str) -> _Answer:
    return _Answer(status, {"statusCode": status, "name": name, "message": message})


def _fault_answer(fault: _Fault) -> _Answer:
    answer = _error(fault.status, fault.name, fault.message)
    answer.headers.update(fault.headers)
    if fault.retry_after is not None:
        answer.headers["retry-after"] = f"{fault.retry_after:g}"
    return answer


def _replay(record: _Record, fingerprint: str) -> _Answer:
    if record.fingerprint != fingerprint:
        message = "Same idempotency key used with a different request payload."
        return _error(409, "invalid_idempotent_request", message)
    if record.answer is None:
        message = "Same idempotency key used while original request is still in progress."
        return _error(409, "concurrent_idempotent_requests", message)
    return _Answer(record.answer.status, record.answer.body, replayed=True)


def _auth_problem(header: str | None, api_key: str) -> tuple[int, tuple[str, str]] | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return 401, ("missing_api_key", "Missing API key in the authorization header.")
    if token.strip() != api_key:
        return 403, ("invalid_api_key", "API key is invalid.")
    return None


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# -- validation ------------------------------------------------------------------------------


def _problem(email: Any, *, in_batch: bool) -> Problem | None:
    """The first thing wrong with one email, as Resend would name it, or None."""
    if not isinstance(email, dict):
        return "validation_error", "Each email must be a JSON object."
    for name in ("from", "to", "subject"):
        if name not in email:
            return "missing_required_field", f"Missing `{name}` field."
    if not (email.get("html") or email.get("text")):
        return "missing_required_field", "Missing `html` or `text` field."
    if unknown := sorted(set(email) - _FIELDS):
        return "validation_error", f"Unknown field `{unknown[0]}`."
    checks = (_check_addresses, _check_strings, _check_headers, _check_tags)
    for check in checks:
        if problem := check(email):
            return problem
    return _check_attachments(email.get("attachments"), in_batch=in_batch)


def _addresses(value: Any) -> list[str] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        return None
    return items


def _valid_address(text: str) -> bool:
    return _EMAIL.fullmatch(parseaddr(text)[1]) is not None


def _check_addresses(email: dict[str, Any]) -> Problem | None:
    if not isinstance(email["from"], str) or not _valid_address(email["from"]):
        return "validation_error", "Invalid `from` field."
    for name in ("to", "cc", "bcc", "reply_to"):
        if name not in email:
            continue
        items = _addresses(email[name])
        if items is None or (name == "to" and not items):
            return "validation_error", f"Invalid `{name}` field."
        if bad := [item for item in items if not _valid_address(item)]:
            return "validation_error", f"Invalid `{name}` field: {bad[0]!r} is not an address."
    if len(_addresses(email["to"]) or ()) > MAX_TO:
        return "validation_error", f"The `to` field can have at most {MAX_TO} recipients."
    return None


def _check_strings(email: dict[str, Any]) -> Problem | None:
    if not isinstance(email["subject"], str) or not email["subject"]:
        return "validation_error", "Invalid `subject` field."
    for name in ("html", "text"):
        if name in email and not isinstance(email[name], str):
            return "validation_error", f"Invalid `{name}` field."
    return None


def _check_headers(email: dict[str, Any]) -> Problem | None:
    headers = email.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\n" not in v and "\r" not in v
        for k, v in headers.items()
    ):
        return "validation_error", "Invalid `headers` field."
    return None


def _check_tags(email: dict[str, Any]) -> Problem | None:
    tags = email.get("tags", [])
    if not isinstance(tags, list) or not all(
        isinstance(t, dict)
        and _TAG.fullmatch(str(t.get("name")))
        and _TAG.fullmatch(str(t.get("value")))
        for t in tags
    ):
        return "validation_error", "Tags may only contain ASCII letters, numbers, _ and -."
    return None


def _check_attachments(attachments: Any, *, in_batch: bool) -> Problem | None:
    if attachments is None:
        return None
    if in_batch:
        return "validation_error", "Attachments are not supported in batch emails."
    if not isinstance(attachments, list):
        return "validation_error", "Invalid `attachments` field."
    for attachment in attachments:
        if not isinstance(attachment, dict) or not (
            "content" in attachment or "path" in attachment
        ):
            return "invalid_attachment", "Attachment must have either a `content` or `path`."
        try:
            base64.b64decode(attachment.get("content", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            return "invalid_attachment", "Attachment `content` must be base64."
        if not isinstance(attachment.get("filename"), str):
            return "validation_error", "Attachment `filename` is required."
    return None
