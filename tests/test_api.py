"""The HTTP API through the real ASGI stack (httpx's ASGI transport), on both brokers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments import deployment_for
from emailq.api import create_app, sandbox
from emailq.api.batch import parse_batch
from emailq.broker import Broker, State
from emailq.deployment import Deployment
from emailq.errors import InvalidEmail
from emailq.keys import KeyStore
from emailq.sink import free_port

pytestmark = pytest.mark.anyio

EMAIL = {"from": "planner@weddings.example", "to": "guest@example.org",
         "subject": "Ceremony moved to 16:30", "text": "See you there."}  # fmt: skip


@dataclass
class Api:
    client: httpx.AsyncClient
    broker: Broker
    keys: KeyStore
    secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    async def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth | headers)


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url, api={"max_body_bytes": 64 * 1024}) as opened:
        yield opened


@pytest.fixture
async def api(deployment: Deployment) -> AsyncIterator[Api]:
    _, secret = deployment.keys.create("acme", "tests")
    transport = httpx.ASGITransport(app=create_app(deployment))
    async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
        yield Api(client, deployment.broker, deployment.keys, secret)


def fields_of(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"] == "application/problem+json"
    return [error["field"] for error in response.json().get("errors", [])]


async def test_a_valid_email_is_queued_in_its_lane(api: Api) -> None:
    wedding = {"wedding_id": "w1", "ceremony_at": "2030-06-01T16:00:00+02:00",
               "kind": "ceremony_change"}  # fmt: skip
    response = await api.post("/v1/emails", EMAIL | {"wedding": wedding})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/emails/{body['id']}"
    info = api.broker.get(body["id"])
    assert info is not None and (info.state, info.tenant) == (State.QUEUED, "acme")
    status = await api.client.get(f"/v1/emails/{body['id']}", headers=api.auth)
    assert status.json()["state"] == "queued"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": "not-an-address"}, "to.0.email"),
        ({"from": "a@b"}, "from.email"),
        ({"subject": "Hi\r\nBcc: victim@example.org"}, "subject"),
        ({"headers": {"X-Note": "a\nb"}}, "headers.X-Note"),
        ({"headers": {"Bcc": "x@example.org"}}, "headers.Bcc"),
        ({"to": {"email": "ok@example.org", "name": "Evil\r\nBcc: x@y.org"}}, "to.0.name"),
        ({"text": "   "}, "text"),
        ({"unknown": 1}, "unknown"),
        ({"send_at": "2030-01-01T10:00:00"}, "send_at"),
        ({"send_at": "2030-01-01T10:00:00Z", "expires_at": "2030-01-01T09:00:00Z"}, "expires_at"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"tenant": "other"}, None),  # 403, below
    ],
)
async def test_invalid_emails_are_refused_naming_the_field(
    api: Api, change: dict[str, Any], field: str | None
) -> None:
    response = await api.post("/v1/emails", EMAIL | change)
    if field is None:
        assert response.status_code == 403
        return
    assert response.status_code == 422, response.text
    assert field in fields_of(response)
    assert api.broker.stats().backlog == 0


async def test_bodies_that_are_not_json_objects_are_refused(api: Api) -> None:
    for body in (b"not json", b"[1, 2]", b"\xff\xfe"):
        response = await api.client.post("/v1/emails", content=body, headers=api.auth)
        assert response.status_code == 422


async def test_oversized_bodies_are_refused_with_413(api: Api) -> None:
    response = await api.post("/v1/emails", EMAIL | {"text": "x" * 70_000})
    assert response.status_code == 413
    assert response.json()["title"] == "Request body too large"

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 8192

    response = await api.client.post("/v1/emails", content=stream(), headers=api.auth)
    assert response.status_code == 413


async def test_keys_absent_wrong_and_revoked_are_refused(api: Api) -> None:
    absent = await api.client.post("/v1/emails", json=EMAIL)
    assert absent.status_code == 401 and "Bearer" in absent.headers["www-authenticate"]
    wrong = await api.client.post(
        "/v1/emails", json=EMAIL, headers={"Authorization": "Bearer eq_x"}
    )
    assert wrong.status_code == 401
    key, secret = api.keys.create("acme", "to revoke")
    assert api.keys.revoke(key.key_id)
    api.keys.cache_s = 0  # revocation is immediate once the cache is out of the way
    revoked = await api.client.post(
        "/v1/emails", json=EMAIL, headers={"Authorization": f"Bearer {secret}"}
    )
    assert revoked.status_code == 401
    assert secret not in revoked.text


async def test_only_trusted_keys_set_a_priority(api: Api) -> None:
    refused = await api.post("/v1/emails", EMAIL | {"priority": 100})
    assert refused.status_code == 403
    _, trusted = api.keys.create("acme", "ops", trusted=True)
    response = await api.client.post(
        "/v1/emails", json=EMAIL | {"priority": 100}, headers={"Authorization": f"Bearer {trusted}"}
    )
    assert response.status_code == 202 and response.json()["lane"] == "critical"


async def test_idempotent_retries_return_the_first_id(api: Api) -> None:
    first = await api.post("/v1/emails", EMAIL, **{"Idempotency-Key": "change-42"})
    again = await asyncio.gather(
        *(api.post("/v1/emails", EMAIL, **{"Idempotency-Key": "change-42"}) for _ in range(5))
    )
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert api.broker.stats().count(State.QUEUED) == 1
    clash = await api.post("/v1/emails", EMAIL | {"idempotency_key": "other"},
                           **{"Idempotency-Key": "change-42"})  # fmt: skip
    assert clash.status_code == 422 and fields_of(clash) == ["idempotency_key"]


def guest_list(n: int, bad: dict[int, Any] | None = None) -> dict[str, Any]:
    recipients: list[dict[str, Any]] = [
        {"to": f"guest{i}@example.org", "variables": {"name": f"Guest {i}"}} for i in range(n)
    ]
    for index, recipient in (bad or {}).items():
        recipients[index] = recipient
    return {
        "template": {"from": "couple@weddings.example", "subject": "Dear {{ name }}",
                     "text": "Hello {{ name }}", "html": "<p>Hello {{ name }}</p>",
                     "wedding": {"wedding_id": "w9", "ceremony_at": "2031-05-01T15:00:00Z",
                                 "kind": "invitation"}},
        "recipients": recipients,
    }  # fmt: skip


async def test_a_guest_list_is_queued_whole_with_personal_content(api: Api) -> None:
    body = guest_list(300)
    body["recipients"][0]["variables"]["name"] = "<script>alert(1)</script>"
    response = await api.post("/v1/emails/batch", body)
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    assert len(ids) == 300
    assert api.broker.stats().count(State.QUEUED, lane=None) == 300
    [job] = [j for j in api.broker.lease("w", 300, 30) if j.id == ids[0]]
    assert b"&lt;script&gt;" in job.payload  # html escaped; the text part keeps the name as is
    assert job.lane.value == "bulk"


async def test_a_guest_list_with_errors_is_rejected_whole_with_every_error(api: Api) -> None:
    bad = {
        3: {"to": "broken", "variables": {"name": "x"}},
        7: {"to": "g7@example.org", "variables": {}},
        9: {"to": "g9@example.org", "variables": {"name": "Evil\r\nBcc: x@y.org"}},
    }
    response = await api.post("/v1/emails/batch", guest_list(20, bad))
    assert response.status_code == 422
    fields = fields_of(response)
    assert "recipients.3.to.0.email" in fields
    assert {"recipients.7.subject", "recipients.7.text", "recipients.7.html"} <= set(fields)
    assert "recipients.9.subject" in fields
    assert api.broker.stats().backlog == 0


async def test_guest_list_shape_errors(api: Api) -> None:
    too_many = await api.post("/v1/emails/batch", guest_list(1001))
    assert too_many.status_code in (413, 422)
    bad_template = guest_list(2)
    bad_template["template"]["subject"] = "Hi {{ name"
    response = await api.post("/v1/emails/batch", bad_template)
    assert response.status_code == 422 and fields_of(response) == ["template.subject"]
    with_to = guest_list(2)
    with_to["template"]["to"] = "x@example.org"
    assert fields_of(await api.post("/v1/emails/batch", with_to)) == ["template.to"]


async def test_template_errors_are_reported_once_on_the_template(api: Api) -> None:
    body = guest_list(50)
    del body["template"]["subject"], body["template"]["text"], body["template"]["html"]
    body["template"]["from"] = "not an address"
    body["template"]["headers"] = {"Bcc": "x@example.org"}
    response = await api.post("/v1/emails/batch", body)
    assert response.status_code == 422
    assert sorted(fields_of(response)) == [
        "template.from.email", "template.headers.Bcc", "template.subject", "template.text"
    ]  # fmt: skip
    assert api.broker.stats().backlog == 0


@pytest.mark.parametrize(
    ("field", "source"),
    [
        ("text", "{% block subject %}x{% endblock %}"),  # would define "subject" twice
        ("text", "Hi {% block to %}x@evil.example{% endblock %}"),  # would set the guest's to
        ("text", "{% block idempotency_key %}same{% endblock %}"),  # ... or one key for all
        ("subject", "Hi{% endblock %}{% block html %}{{ name }}"),  # an html part, unescaped
        ("html", "{% endautoescape %}{{ name }}"),  # out of the html's autoescape
    ],
)
async def test_a_field_cannot_reach_into_other_fields(api: Api, field: str, source: str) -> None:
    body = guest_list(2)
    body["template"][field] = source
    response = await api.post("/v1/emails/batch", body)
    assert response.status_code == 422 and fields_of(response) == [f"template.{field}"]
    assert api.broker.stats().backlog == 0


async def test_cancel_before_a_worker_takes_it_and_not_after(api: Api) -> None:
    first = (await api.post("/v1/emails", EMAIL)).json()["id"]
    second = (await api.post("/v1/emails", EMAIL)).json()["id"]
    cancelled = await api.client.delete(f"/v1/emails/{first}", headers=api.auth)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    [job] = api.broker.lease("worker", 10, 30)  # the worker takes the second one...
    assert job.id == second
    late = await api.client.delete(f"/v1/emails/{second}", headers=api.auth)
    assert late.status_code == 409 and "leased" in late.json()["detail"]


async def test_cancel_racing_a_worker_has_one_winner(api: Api) -> None:
    ids = [(await api.post("/v1/emails", EMAIL)).json()["id"] for _ in range(40)]

    async def cancel_all() -> list[int]:
        return [
            (await api.client.delete(f"/v1/emails/{i}", headers=api.auth)).status_code for i in ids
        ]

    leased, statuses = await asyncio.gather(
        asyncio.to_thread(api.broker.lease, "racer", 40, 30), cancel_all()
    )
    taken = {job.id for job in leased}
    for message_id, status in zip(ids, statuses, strict=True):
        info = api.broker.get(message_id)
        assert info is not None
        if status == 200:
            assert message_id not in taken and info.state == State.CANCELLED
        else:
            assert status == 409 and message_id in taken and info.state == State.LEASED


async def test_other_tenants_cannot_see_or_cancel(api: Api) -> None:
    message_id = (await api.post("/v1/emails", EMAIL)).json()["id"]
    _, other = api.keys.create("globex")
    headers = {"Authorization": f"Bearer {other}"}
    assert (await api.client.get(f"/v1/emails/{message_id}", headers=headers)).status_code == 404
    assert (await api.client.delete(f"/v1/emails/{message_id}", headers=headers)).status_code == 404


async def test_requeue_a_dead_email_of_ones_own_tenant_only(api: Api) -> None:
    dead, queued = [(await api.post("/v1/emails", EMAIL)).json()["id"] for _ in range(2)]
    [job, _] = api.broker.lease("worker", 2, 30)
    assert job.id == dead
    api.broker.bury(job, "550 mailbox unavailable")
    _, other = api.keys.create("globex")
    for message_id, headers in (("no-such-id", api.auth),
                                (dead, {"Authorization": f"Bearer {other}"})):  # fmt: skip
        missing = await api.client.post(f"/v1/emails/{message_id}/requeue", headers=headers)
        assert missing.status_code == 404
    assert api.broker.get(dead).state == State.DEAD  # type: ignore[union-attr]
    requeued = await api.client.post(f"/v1/emails/{dead}/requeue", headers=api.auth)
    assert requeued.status_code == 200 and requeued.json() == {"id": dead, "state": "queued"}
    info = api.broker.get(dead)
    assert info is not None and (info.state, info.attempts) == (State.QUEUED, 0)
    for message_id, state in ((dead, "queued"), (queued, "leased")):  # not dead: 409
        again = await api.client.post(f"/v1/emails/{message_id}/requeue", headers=api.auth)
        assert again.status_code == 409 and f"is {state}" in again.json()["detail"]


async def test_queues_health_and_metrics(api: Api) -> None:
    await api.post("/v1/emails", EMAIL)
    queues = (await api.client.get("/v1/queues", headers=api.auth)).json()
    assert queues["standard"]["depth"]["queued"] == 1
    assert (await api.client.get("/health")).json() == {"status": "ok"}
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["broker"] is True
    metrics = (await api.client.get("/metrics")).text
    assert 'emailq_accepted_total{lane="standard"} 1.0' in metrics
    assert 'emailq_queue_messages{lane="standard",state="queued"} 1.0' in metrics


async def test_tenant_intake_rate_is_answered_with_429(broker_url: str) -> None:
    deployment = deployment_for(broker_url, api={"tenant_rate": 1, "tenant_burst": 3})
    _, secret = deployment.keys.create("acme")
    app = create_app(deployment)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        headers = {"Authorization": f"Bearer {secret}"}
        codes = [(await c.post("/v1/emails", json=EMAIL, headers=headers)) for _ in range(5)]
    assert [r.status_code for r in codes] == [202, 202, 202, 429, 429]
    assert int(codes[3].headers["retry-after"]) >= 1


async def test_guest_list_idempotency_comes_per_recipient_or_from_the_header(api: Api) -> None:
    keyed = guest_list(3)
    keyed["template"]["idempotency_key"] = "one-for-all"
    refused = await api.post("/v1/emails/batch", keyed)
    assert refused.status_code == 422 and fields_of(refused) == ["template.idempotency_key"]
    first = await api.post("/v1/emails/batch", guest_list(5), **{"Idempotency-Key": "run-7"})
    again = await api.post("/v1/emails/batch", guest_list(5), **{"Idempotency-Key": "run-7"})
    assert first.json()["ids"] == again.json()["ids"]
    assert api.broker.stats().count(State.QUEUED) == 5


async def test_a_template_that_fails_for_one_guest_names_that_guest(api: Api) -> None:
    body = guest_list(3)
    body["template"]["subject"] = "Table {{ table + 1 }}"
    for index, table in enumerate([4, 5, "six"]):
        body["recipients"][index]["variables"]["table"] = table
    response = await api.post("/v1/emails/batch", body)
    assert response.status_code == 422
    assert fields_of(response) == ["recipients.2.subject"]


async def test_readiness_answers_within_its_deadline_when_redis_is_gone(
    redis_server: str, tmp_path: Path
) -> None:
    port = free_port()
    server = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--dir", str(tmp_path)])  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0?prefix=ready"
        with deployment_for(url, api={"ready_timeout_s": 0.5, "check_provider": False}) as dep:
            app = create_app(dep)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
                deadline = time.monotonic() + 10  # until the new server answers
                while (await client.get("/health/ready")).status_code != 200:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    await asyncio.sleep(0.05)
                server.kill()
                server.wait()
                # The client would reconnect for about a minute; two probes at once share
                # one check, and each answers at its own deadline.
                started = time.monotonic()
                probes = await asyncio.gather(*(client.get("/health/ready") for _ in range(2)))
                assert time.monotonic() - started < 10  # not the client's minute of retries
                for probe in probes:
                    assert probe.status_code == 503 and probe.headers["retry-after"]
                    body = probe.json()
                    assert (body["status"], body["broker"], body["provider"]) == (
                        "not ready", False, True)  # fmt: skip
                    assert body["broker_problem"].startswith(("unreachable", "no answer"))
    finally:
        server.kill()
        server.wait()


@pytest.mark.redis
async def test_a_full_redis_is_503_with_retry_after_and_readiness_says_full(
    small_redis: str,
) -> None:
    deployment = deployment_for(small_redis)
    _, secret = deployment.keys.create("acme")
    app = create_app(deployment)
    headers = {"Authorization": f"Bearer {secret}"}
    big = EMAIL | {"text": "x" * 50_000}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        codes = [(await c.post("/v1/emails", json=big, headers=headers)) for _ in range(100)]
        refused = [r for r in codes if r.status_code != 202]
        assert refused, "the 2 MB Redis never filled up"
        assert {r.status_code for r in refused} == {503}
        assert refused[0].headers["retry-after"]
        assert refused[0].headers["content-type"] == "application/problem+json"
        ready = await c.get("/health/ready")
    deployment.close()
    assert ready.status_code == 503
    assert "maxmemory" in ready.json()["broker_problem"]


# -- issue 11: the security/fuzz review of the intake -----------------------------------------
async def post_raw(api: Api, path: str, body: Any) -> httpx.Response:
    """``body`` as JSON text with every non-ASCII character escaped, lone surrogates too."""
    headers = api.auth | {"Content-Type": "application/json"}
    return await api.client.post(path, content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tags": {"\ud800": "x"}}, "tags.\\ud800"),
        ({"headers": {"X-\udfff": "x"}}, "headers.X-\\udfff"),
        ({"tags": {"campaign": "\ud800"}}, "tags.campaign"),
        ({"headers": {"X-Note": "\ud800"}}, "headers.X-Note"),
        ({"attachments": [{"filename": "a\ud800.pdf", "content": ""}]}, "attachments.0.filename"),
        ({"wedding": {"wedding_id": "\ud800", "ceremony_at": "2030-01-01T00:00:00Z"}},
         "wedding.wedding_id"),
        ({"subject": "\ud800"}, "subject"),
        ({"text": "\ud800"}, "text"),
    ],
)  # fmt: skip
async def test_issue11_2_lone_surrogates_are_a_422_naming_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    response = await post_raw(api, "/v1/emails", EMAIL | change)
    assert response.status_code == 422, response.text
    assert field in fields_of(response)
    assert api.broker.stats().backlog == 0


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
async def test_issue11_2_ceremony_at_past_the_range_is_a_422_naming_it(api: Api, at: str) -> None:
    wedding = {"wedding_id": "w1", "ceremony_at": at, "kind": "ceremony_change"}
    response = await api.post("/v1/emails", EMAIL | {"wedding": wedding, "send_at": at})
    assert response.status_code == 422, response.text
    assert sorted(fields_of(response)) == ["send_at", "wedding.ceremony_at"]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [31, 1000, 20_000])  # 31 + the body and "tags": 33 levels
async def test_issue11_3_deeply_nested_json_is_a_422_naming_the_body(api: Api, depth: int) -> None:
    body = json.dumps(EMAIL)[:-1] + f', "tags": {{"a": {nested(depth)}}}}}'
    response = await api.client.post("/v1/emails", content=body, headers=api.auth)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "", "message": "the body nests JSON deeper than 32 levels"}
    ]


@pytest.mark.parametrize(("depth", "status"), [(28, 202), (29, 422), (1000, 422), (20_000, 422)])
async def test_issue11_3_guest_lists_nest_at_most_32_levels(
    api: Api, depth: int, status: int
) -> None:
    # body > recipients > recipient > variables: 4 levels above the nested lists
    body = json.dumps(guest_list(2)).replace(
        '"variables": {', f'"variables": {{"x": {nested(depth)}, ', 1
    )
    response = await api.client.post("/v1/emails/batch", content=body, headers=api.auth)
    assert response.status_code == status, response.text
    if status == 422:
        assert [e["field"] for e in response.json()["errors"]] == [""]


def render_batch(text: str, guests: int = 2, **variables: Any) -> list[Any]:
    """The guest list's emails for a template text, in process (no queue)."""
    body = guest_list(guests)
    body["template"]["text"] = text
    for recipient in body["recipients"]:
        recipient["variables"] |= variables
    return parse_batch(json.dumps(body).encode(), lambda template: None)


# Each just over a limit, so that the code before the limits accepts them quickly.
TEMPLATE_BOMBS = {
    "string product": "{{ 'x' * 1000001 }}",
    "list product": "{% set a = 'x' * 1000 %}{{ ([a] * 1001)|join }}",
    "center": "{{ 'x'|center(1000001) }}",
    "ljust": "{{ 'x'.ljust(1000001) }}",
    "% format": "{{ '%1000001s' % 'x' }}",
    "% format with *": "{{ '%*s' % (1000001, 'x') }}",
    "str.format": "{{ '{:1000001}'.format('x') }}",
    "format filter": "{{ '%1000001s'|format('x') }}",
    "~ doubling": "{% set a = 'x' * 600000 %}{{ (a ~ a)|length }}",
    "+ doubling": "{% set a = 'x' * 600000 %}{{ (a + a)|length }}",
    "power": "{{ 9 ** 99999 }}",
    "replace": "{{ ('x' * 1001)|replace('x', 'y' * 1000) }}",
    "str.replace": "{{ ('x' * 1001).replace('x', 'y' * 1000) }}",
    "join separator": "{{ range(1001)|join('x' * 1000) }}",
    "str.join": "{{ ('x' * 1000).join(range(1001)|map('string')) }}",
    "wordwrap": "{{ ('x' * 1001)|wordwrap(1, wrapstring='y' * 1000) }}",
    "indent": "{{ ('\\n' * 1001)|indent(1000) }}",
    "expandtabs": "{{ ('\\t' * 1001).expandtabs(1000) }}",
    "range": "{{ range(10001)|length }}",
    "loop iterations": "{% for i in range(2) %}{% for j in range(5001) %}{% endfor %}{% endfor %}",
    "macro calls": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                   "{{ f(14) }}",
    "field output": "{% for i in range(1001) %}{{ 'x' * 1000 }}{% endfor %}",
    "buffered output": "{% set b %}{% for i in range(1001) %}{{ 'x' * 1000 }}{% endfor %}"
                       "{% endset %}{{ b|length }}",
    "references": "{% set a = 'x' * 1000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
                  "{% set c = [b, b, b, b, b, b, b, b, b, b] %}"
                  "{{ [c, c, c, c, c, c, c, c, c, c, c] }}",
    "list sum": "{{ [[0] * 1000] * 2|sum(start=[]) }}",
    "lipsum": "{{ lipsum(1) }}",
}  # fmt: skip


@pytest.mark.parametrize("text", TEMPLATE_BOMBS.values(), ids=TEMPLATE_BOMBS.keys())
async def test_issue11_5_templates_over_the_limits_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidEmail) as caught:
        render_batch(text)
    assert {e.field for e in caught.value.errors} == {"recipients.0.text", "recipients.1.text"}
    assert all("template error" in e.message for e in caught.value.errors)


async def test_issue11_5_a_template_bomb_through_the_api_is_a_422(api: Api) -> None:
    body = guest_list(3)
    body["template"]["text"] = "{{ 'x' * 500000000 }}"  # 23 s and 2.5 GB before the limits
    response = await api.post("/v1/emails/batch", body)
    assert response.status_code == 422
    assert fields_of(response) == [f"recipients.{i}.text" for i in range(3)]
    assert "over 1000000 characters" in response.json()["errors"][0]["message"]
    source = guest_list(1)
    source["template"]["html"] = "x" * 1_000_001  # a field's template is within the limit too
    with pytest.raises(InvalidEmail) as caught:
        parse_batch(json.dumps(source).encode(), lambda template: None)
    assert [e.field for e in caught.value.errors] == ["template.html"]


async def test_issue11_5_a_guest_list_has_a_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "RENDER_SECONDS", 0.05)
    slow = (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(12) }}"
    )
    with pytest.raises(InvalidEmail) as caught:
        render_batch(slow, guests=1000)
    [error] = caught.value.errors  # rendering stops at the guest who ran out of time
    assert "took over 0.05 s" in error.message and error.field.endswith(".text")


async def test_issue11_5_a_guest_list_has_a_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "MAX_LIST_CHARS", 25_000)
    [first, *_] = render_batch("{{ 'x' * 10000 }}", guests=2)
    assert first.text == "x" * 10000
    with pytest.raises(InvalidEmail) as caught:
        render_batch("{{ 'x' * 10000 }}", guests=3)
    assert [e.field for e in caught.value.errors] == ["recipients.2.text"]


async def test_issue11_5_templates_within_the_limits_render_as_before() -> None:
    text = (
        "{% set ns = namespace(total=0) %}{% for item in items %}{% set ns.total = ns.total"
        " + item.price %}{{ loop.index }}. {{ item.name|title|center(12) }} {{ '%5.2f'|format("
        "item.price) }}\n{% endfor %}Total: {{ '{:.2f}'.format(ns.total) }} {{ names|join(', ') }}"
        " {{ 'ab' * 3 }} {{ 2 ** 10 }} {{ range(3)|sum }} {{ 'x'.ljust(3, '-') }}"
        "{% macro hi(n) %}Hi {{ n }}{% endmacro %} {{ hi('Ana') ~ '!' }}"
        " {{ 'a b'|replace(' ', '_') }}"
    )
    items = [{"name": "wine", "price": 12.5}, {"name": "cake", "price": 30}]
    [email, _] = render_batch(text, items=items, names=["Ana", "Ben"])
    assert email.text == (
        "1.     Wine     12.50\n2.     Cake     30.00\nTotal: 42.50 Ana, Ben ababab 1024 3 x--"
        " Hi Ana! a_b"
    )


async def test_issue11_7_fields_ending_in_a_tag_opener_are_not_a_500(api: Api) -> None:
    # Found by the issue-11 fuzz test: joined as text, "Hi {" and the next field's "{% ..."
    # made "{{%", a TemplateSyntaxError from a template whose fields each compiled.
    body = guest_list(2)
    body["template"] |= {"subject": "Hi {", "text": "Hi {{ name }} {#", "html": "<p>{{ name }}{"}
    assert (await api.post("/v1/emails/batch", body)).status_code == 202
    [first, _] = parse_batch(json.dumps(body).encode(), lambda template: None)
    assert (first.subject, first.text, first.html) == ("Hi {", "Hi Guest 0 ", "<p>Guest 0{")


async def test_a_tenant_flooding_at_ten_times_its_rate_gets_429_within_a_few_seconds(
    broker_url: str,
) -> None:
    # No burst configured: a tenant may submit about two seconds of its rate at once, not
    # thousands, so a flood at 10x its rate is refused within about two seconds.
    deployment = deployment_for(broker_url, api={"tenant_rate": 50})
    _, secret = deployment.keys.create("acme")
    headers = {"Authorization": f"Bearer {secret}"}
    transport = httpx.ASGITransport(app=create_app(deployment))
    started = time.monotonic()
    refused_after: float | None = None
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        while refused_after is None and time.monotonic() - started < 10:
            wave = await asyncio.gather(
                *(client.post("/v1/emails", json=EMAIL, headers=headers) for _ in range(50))
            )  # 50 every 0.1 s: 500/s, ten times the rate
            if any(r.status_code == 429 for r in wave):
                refused_after = time.monotonic() - started
                assert all(r.headers["retry-after"] for r in wave if r.status_code == 429)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started) % 0.1))
    deployment.close()
    assert refused_after is not None and refused_after < 3.0, refused_after
