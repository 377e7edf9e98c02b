"""The monitor's loop (``emailq monitor``, and a thread inside ``emailq run`` and
``emailq serve``): every interval, if this process holds the broker's lease, take in the
workers' samples and the queue's depth, write one snapshot, evaluate the alert rules and
hand the notices to the dispatcher. Any number of processes may run it: the lease makes
one of them the writer, and a snapshot slot is written once whoever writes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import uuid
from collections import deque
from urllib.parse import urlsplit

from emailq.clock import Clock
from emailq.deployment import Deployment
from emailq.monitor import fleet
from emailq.monitor.alerts import Alerts
from emailq.monitor.notify import Channel, Dispatcher, EmailChannel, SlackChannel, WebhookChannel
from emailq.monitor.rules import Rule, load_rules
from emailq.monitor.silences import silences
from emailq.monitor.snapshot import Snapshot, build_snapshot
from emailq.monitor.store import MonitorStore, open_store
from emailq.probes import provider_reachable
from emailq.settings import MonitorSection

log = logging.getLogger(__name__)


def channels_from(settings: MonitorSection) -> list[Channel]:
    channels: list[Channel] = []
    if settings.slack_url is not None:
        channels.append(SlackChannel(settings.slack_url.get_secret_value()))
    if settings.webhook_url:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        channels.append(WebhookChannel(settings.webhook_url, secret))
    if settings.email_to and settings.email_smtp_url:
        channels.append(EmailChannel(settings.email_smtp_url, settings.email_from,
                                     settings.email_to))  # fmt: skip
    return channels


def provider_key(url: str) -> str:
    """The name workers report their provider by (``Provider.name``)."""
    scheme = urlsplit(url).scheme
    return "smtp" if scheme in ("smtp", "smtps") else scheme


def slot_of(at: float, interval_s: float) -> float:
    return math.floor(at / interval_s) * interval_s


class Monitor:
    def __init__(
        self,
        deployment: Deployment,
        *,
        clock: Clock | None = None,
        channels: list[Channel] | None = None,
        rules: tuple[Rule, ...] | None = None,
        notify_backoff_s: float = 2.0,
    ) -> None:
        self.deployment = deployment
        self.settings = deployment.settings.monitor
        self.clock = clock if clock is not None else deployment.clock
        self.store: MonitorStore = open_store(deployment.broker, self.clock)
        self.rules = rules if rules is not None else load_rules(self.settings.rules_file)
        self.worker_stale_s = 3 * self.settings.publish_s
        self.alerts = Alerts(self.rules, self.worker_stale_s)
        chosen = channels if channels is not None else channels_from(self.settings)
        self.dispatcher = Dispatcher(chosen, backoff_s=notify_backoff_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        interval = self.settings.interval_s
        longest = max((rule.window_s for rule in self.rules), default=0.0)
        self.recent: deque[Snapshot] = deque(maxlen=int(longest / interval) + 2)
        self.notices_sent = 0

    @property
    def interval_s(self) -> float:
        return self.settings.interval_s

    def tick(self) -> Snapshot | None:
        """One evaluation; the snapshot written, or None (not the writer, or slot taken)."""
        at = self.clock()
        if not self.store.acquire_lease(self.owner, 3 * self.interval_s):
            self.leading = False
            return None
        if not self.leading:
            self._take_over(at)
        slot = slot_of(at, self.interval_s)
        before = self.recent[-1] if self.recent else None
        if before is not None and before.at >= slot:
            return None
        samples = self.store.take_samples()
        url = self.deployment.settings.provider.url
        snapshot = build_snapshot(
            slot, self.deployment.broker.stats(), samples.bodies, before,
            {provider_key(url): provider_reachable(url)},
            worker_ttl_s=3600.0, default_elapsed_s=self.interval_s,
        )  # fmt: skip
        silenced = silences(self.store, slot)
        notices = self.alerts.evaluate([*self.recent, snapshot], slot)
        snapshot.alerts = self.alerts.active(silenced, slot)
        snapshot.events = [n.to_json() | {"silenced": n.rule in silenced} for n in notices]
        retention = self.settings.retention_s
        written = self.store.write_snapshot(
            self.owner, slot, snapshot.to_json(), samples.cursor, at - retention,
            int(retention / self.interval_s) + 2,
        )  # fmt: skip
        if not written:  # lost the lease meanwhile: the new writer goes on from the store
            self.leading = False
            return None
        self.recent.append(snapshot)
        self.store.put("alerts", self.alerts.dump())
        self._add_to_fleet(snapshot)
        for notice in notices:
            if notice.rule not in silenced:
                self.dispatcher.send(notice)
                self.notices_sent += 1
        return snapshot

    def _take_over(self, at: float) -> None:
        """Becoming the writer: the recent history and alert states from the store."""
        span = self.recent.maxlen or 2
        self.recent.clear()
        for _, body in self.store.history(at - span * self.interval_s, at):
            self.recent.append(Snapshot.from_json(body))
        self.alerts = Alerts(self.rules, self.worker_stale_s)
        self.alerts.load(self.store.get("alerts"))
        self.leading = True
        log.info("monitor %s writes the history now", self.owner)

    def _add_to_fleet(self, snapshot: Snapshot) -> None:
        raw = self.store.get(fleet.KEY)
        totals = json.loads(raw) if raw else {}
        fleet.add_snapshot(totals, snapshot, self.worker_stale_s)
        self.store.put(fleet.KEY, json.dumps(totals).encode())

    def run(self, stop: threading.Event) -> None:
        """Evaluate at every slot boundary until ``stop``; errors are logged, never fatal."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("monitor evaluation failed; trying again next interval")
            wait = slot_of(self.clock(), self.interval_s) + self.interval_s - self.clock()
            stop.wait(max(0.01, wait + 0.01))

    def close(self, notify_timeout_s: float = 5.0) -> None:
        """Give up the lease; notices still being delivered get ``notify_timeout_s``."""
        try:
            self.store.release_lease(self.owner)
        except Exception:
            log.warning("could not release the monitor lease; it lapses by itself")
        self.dispatcher.close(notify_timeout_s)
        self.store.close()


class MonitorThread:
    """The monitor on a thread of its own deployment, for ``emailq run`` and ``serve``."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="emailq-monitor", daemon=True)

    def _run(self) -> None:
        try:
            monitor = Monitor(self.deployment)
        except Exception:
            log.exception("the monitor could not start")
            return
        try:
            monitor.run(self.stop_event)
        finally:
            monitor.close()

    def start(self) -> MonitorThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.deployment.close()
