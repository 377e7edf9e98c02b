"""The open-loop generator: arrivals at their scheduled times, whether or not emailq keeps up.

:func:`arrivals` is the schedule, a pure function of the scenario and a seed. The feeders
submit each arrival when its time comes and record its *scheduled* time, so a stall in
the service (or in the feeder itself) shows up in the latency instead of slowing the
offered load down (no coordinated omission). Embedded runs enqueue through the Python
API in small batches; ``--target`` runs submit over HTTP with the Python client, many
requests in flight, each one started at its arrival's time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from emailq.broker import Broker, NewMessage
from emailq.client import AsyncClient
from emailq.clock import now
from emailq.intake import to_new_message
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.policy import place
from emailq_loadtest.measure import Ledger
from emailq_loadtest.scenarios import EVENT_KINDS, EventKind, Scenario

TENANT = "loadtest"
DOMAINS = ("example.com", "example.org", "example.net", "guests.example", "mail.example")
COUPLES = ("Ana & Ben", "Chloe & Dev", "Eli & Faye", "Gus & Hana", "Ines & Jon", "Kai & Lea")
TODAY_WEDDINGS = 60  # "many weddings at once": today's weddings the mail is spread over
TEXT = (
    "Dear {name},\n\n{subject}: news about the wedding of {couple}.\n\n"
    "The ceremony is in the castle gardens, followed by dinner and dancing in the\n"
    "orangery. Shuttles leave the hotel a quarter of an hour before; the lawn is soft,\n"
    "so block heels are a good idea. Reply to this email with any question.\n\n"
    "With love,\n{couple}\n"
)
HTML = (
    '<!doctype html><html><body style="font-family: Georgia, serif">'
    "<h1>{couple}</h1><p>Dear {name},</p><p>{subject}: news about the wedding.</p>"
    "<p>The ceremony is in the castle gardens, followed by dinner and dancing in the "
    "orangery. Shuttles leave the hotel a quarter of an hour before.</p>"
    "<p>With love,<br>{couple}</p></body></html>"
)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One submission: ``recipients`` emails of one kind, due ``at`` seconds into the run."""

    at: float
    kind: EventKind
    recipients: int
    wedding: int
    ceremony_h: float | None  # hours from ``at`` to the ceremony
    segment: int
    seq: int  # the arrival's number in the run: ids and keys derive from it


SMALL = 20  # events of at most this many recipients on average arrive as a Poisson process


def arrivals(scenario: Scenario, seed: int = 0) -> Iterator[Arrival]:
    """The run's schedule in time order. Each kind of event arrives at the rate that gives
    it its share of the messages: small ones (one-to-one mail, vendor updates) as a Poisson
    process, large runs (invitations, guest-wide updates) evenly spaced from a random phase
    that carries across segments, so a short run still offers close to its nominal rate."""
    rng = random.Random(seed)
    seq = itertools.count()
    phases = {name: rng.random() for name in EVENT_KINDS}  # progress towards the next event
    for index, (start, end, segment) in enumerate(scenario.windows()):
        per_s = scenario.rate_per_min * segment.multiplier / 60
        streams = []
        for name, share in segment.mix:
            kind = EVENT_KINDS[name]
            rate = per_s * share / kind.mean_size
            if scenario.poisson and kind.mean_size <= SMALL:
                streams.append(_poisson(kind, rate, start, end, rng))
            else:
                streams.append(_even(kind, rate, start, end, phases))
        for at, kind in heapq.merge(*streams, key=lambda item: item[0]):
            low, high = kind.ceremony_h or (0.0, 0.0)
            yield Arrival(
                at=at,
                kind=kind,
                recipients=rng.randint(*kind.recipients),
                wedding=rng.randrange(TODAY_WEDDINGS),
                ceremony_h=rng.uniform(low, high) if kind.ceremony_h else None,
                segment=index,
                seq=next(seq),
            )


def _poisson(
    kind: EventKind, per_s: float, start: float, end: float, rng: random.Random
) -> Iterator[tuple[float, EventKind]]:
    if per_s <= 0:
        return
    at = start + rng.expovariate(per_s)
    while at < end:
        yield at, kind
        at += rng.expovariate(per_s)


def _even(
    kind: EventKind, per_s: float, start: float, end: float, phases: dict[str, float]
) -> Iterator[tuple[float, EventKind]]:
    """Every 1/per_s seconds; ``phases`` keeps the progress towards the next event when the
    segment ends, so the next segment goes on where this one stopped."""
    if per_s <= 0:
        return
    gap = 1 / per_s
    at, last = start + (1 - phases[kind.kind]) * gap, None
    while at < end:
        yield at, kind
        last, at = at, at + gap
    progress = (
        (end - last) * per_s if last is not None else phases[kind.kind] + (end - start) * per_s
    )
    phases[kind.kind] = min(progress, 1.0)


# -- the emails of one arrival ----------------------------------------------------------------


def _wedding(arrival: Arrival, sent_at: datetime) -> dict[str, str] | None:
    if arrival.ceremony_h is None:
        return None
    ceremony = sent_at + timedelta(hours=arrival.ceremony_h)
    today = arrival.kind.kind in ("vendor_update", "wedding_day_update", "ceremony_change")
    wedding_id = f"today-{arrival.wedding}" if today else f"w-{arrival.seq}"
    return {"wedding_id": wedding_id, "ceremony_at": ceremony.isoformat(),
            "kind": arrival.kind.kind}  # fmt: skip


def template(arrival: Arrival, sent_at: datetime) -> dict[str, Any]:
    """Every field of the arrival's emails but the recipient; ``{{ name }}`` in the bodies."""
    couple = COUPLES[arrival.wedding % len(COUPLES)]
    fields = {"name": "{{ name }}", "subject": arrival.kind.subject, "couple": couple}
    data: dict[str, Any] = {
        "from": {"email": "hello@weddings.example", "name": f"{couple} via emailq"},
        "subject": f"{couple}: {arrival.kind.subject}",
        "text": TEXT.format(**fields),
        "html": HTML.format(**fields),
    }
    wedding = _wedding(arrival, sent_at)
    if wedding:
        data["wedding"] = wedding
    return data


def recipient(arrival: Arrival, index: int) -> dict[str, Any]:
    name = f"Guest {index}"
    address = f"g{arrival.seq}.{index}@{DOMAINS[(arrival.seq + index) % len(DOMAINS)]}"
    return {"to": {"email": address, "name": name}, "variables": {"name": name},
            "idempotency_key": f"lt-{arrival.seq}-{index}"}  # fmt: skip


def emails(arrival: Arrival, sent_at: datetime) -> Iterator[dict[str, Any]]:
    """The arrival's emails as an application submits them one by one (the API's shape)."""
    base = template(arrival, sent_at)
    for index in range(arrival.recipients):
        guest = recipient(arrival, index)
        name = guest["variables"]["name"]
        yield base | {
            "to": [guest["to"]],
            "text": base["text"].replace("{{ name }}", name),
            "html": base["html"].replace("{{ name }}", name),
            "tenant": TENANT,
            "idempotency_key": guest["idempotency_key"],
        }


def lane_of(arrival: Arrival, sent_at: datetime) -> Lane:
    """The lane emailq's default policy gives the arrival's emails."""
    ceremony = None
    if arrival.ceremony_h is not None:
        ceremony = sent_at + timedelta(hours=arrival.ceremony_h)
    return place(arrival.kind.kind, ceremony, sent_at).lane


# -- feeders ---------------------------------------------------------------------------------


class BrokerFeeder:
    """Embedded runs: build each due arrival's emails through the intake path (validate,
    lane from the policy) and ``enqueue_many`` them in batches of at most ``chunk``."""

    def __init__(
        self,
        broker: Broker,
        scenario: Scenario,
        ledger: Ledger,
        *,
        seed: int = 0,
        chunk: int = 100,
        stop: threading.Event | None = None,
    ) -> None:
        self.broker, self.scenario, self.ledger = broker, scenario, ledger
        self.seed, self.chunk = seed, chunk
        self.stop = stop or threading.Event()
        self._messages: list[NewMessage] = []
        self._scheduled: list[float] = []

    def run(self, start: float) -> None:
        for arrival in arrivals(self.scenario, self.seed):
            due = start + arrival.at
            wait = due - now()
            if wait > 0:
                self._flush()
                if self.stop.wait(wait):
                    break
            elif self.stop.is_set():
                break
            self._add(arrival, due)
        self._flush()

    def _add(self, arrival: Arrival, due: float) -> None:
        sent_at = datetime.fromtimestamp(due, UTC)
        for data in emails(arrival, sent_at):
            self._messages.append(to_new_message(parse_email(data), sent_at))
            self._scheduled.append(due)
            if len(self._messages) >= self.chunk:
                self._flush()

    def _flush(self) -> None:
        if not self._messages:
            return
        messages, scheduled = self._messages, self._scheduled
        self._messages, self._scheduled = [], []
        started = time.perf_counter()
        ids = self.broker.enqueue_many(messages)
        self.ledger.intake_call(time.perf_counter() - started)
        self.ledger.register(ids, [m.lane for m in messages], scheduled, now())


class HttpFeeder:
    """``--target`` runs: each arrival is one request started at its time (a guest-list
    batch, or a single send for one recipient), up to ``in_flight`` requests at once."""

    def __init__(
        self,
        client: AsyncClient,
        scenario: Scenario,
        ledger: Ledger,
        *,
        seed: int = 0,
        in_flight: int = 64,
        stop: threading.Event | None = None,
    ) -> None:
        self.client, self.scenario, self.ledger = client, scenario, ledger
        self.seed = seed
        self.stop = stop or threading.Event()
        self._slots = asyncio.Semaphore(in_flight)
        self.errors: list[str] = []

    async def run(self, start: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for arrival in arrivals(self.scenario, self.seed):
            if self.stop.is_set():
                break
            wait = start + arrival.at - now()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(self._submit(arrival, start + arrival.at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _submit(self, arrival: Arrival, due: float) -> None:
        sent_at = datetime.fromtimestamp(due, UTC)
        lane = lane_of(arrival, sent_at)
        try:
            async with self._slots:
                started = time.perf_counter()
                ids = await self._send(arrival, sent_at)
                self.ledger.intake_call(time.perf_counter() - started)
        except Exception as error:  # every failed request is counted, and the first few shown
            if len(self.errors) < 20:
                self.errors.append(f"{type(error).__name__}: {error}")
            self.ledger.reject(lane, arrival.recipients, due)
            return
        self.ledger.register(ids, [lane] * len(ids), [due] * len(ids), now())

    async def _send(self, arrival: Arrival, sent_at: datetime) -> list[str]:
        if arrival.recipients == 1:
            [data] = emails(arrival, sent_at)
            del data["tenant"]  # the API key decides the tenant
            key = data.pop("idempotency_key")
            return [(await self.client.send(data, idempotency_key=key)).id]
        guests = [recipient(arrival, i) for i in range(arrival.recipients)]
        return await self.client.send_batch(template(arrival, sent_at), guests)
