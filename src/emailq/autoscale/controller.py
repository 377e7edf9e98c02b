"""Running the policy against a pool: observe, decide, log, count; one autoscaler per queue.

The autoscaler holds a lease in the broker (``autoscaler``) for three intervals and renews
it every decision, so a second ``emailq run --autoscale`` on the same queue waits (keeping
its pool as it is) until the first stops or dies.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket

from emailq.autoscale.metrics import AutoscaleMetrics, queue_name
from emailq.autoscale.observe import Observer
from emailq.autoscale.pattern import TrafficPattern
from emailq.autoscale.policy import AutoscaleConfig, Decision, decide
from emailq.broker import Broker
from emailq.lanes import Lane
from emailq.settings import AutoscaleSection

log = logging.getLogger(__name__)

LEASE_NAME = "autoscaler"


def config_from_settings(section: AutoscaleSection) -> AutoscaleConfig:
    return AutoscaleConfig(
        min_workers=section.min_workers,
        max_workers=section.max_workers,
        deadlines={lane: getattr(section, f"deadline_{lane.value}_s") for lane in Lane},
        emergency_queued=section.emergency_queued,
        up_cooldown_s=section.up_cooldown_s,
        down_after_s=section.down_after_s,
        down_cooldown_s=section.down_cooldown_s,
        down_step=section.down_step,
        headroom=section.headroom,
        worker_rate=section.worker_rate,
        lookahead_s=section.lookahead_s,
        ceremony_margin_s=section.ceremony_margin_s,
        ceremony_horizon_s=section.ceremony_horizon_s,
        ceremony_hold_s=section.ceremony_hold_s,
        pattern=TrafficPattern.parse(
            section.pattern, section.season, section.protected, section.timezone
        ),
    )


class Autoscaler:
    def __init__(
        self,
        broker: Broker,
        config: AutoscaleConfig,
        interval_s: float,
        metrics: AutoscaleMetrics | None = None,
    ) -> None:
        self.broker = broker
        self.config = config
        self.interval_s = interval_s
        self.metrics = metrics or AutoscaleMetrics(queue_name(broker))
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.observer = Observer(broker, config.lookahead_s, config.ceremony_horizon_s)
        self.last_change_at = -math.inf
        self.low_since: float | None = None
        self._holding: bool | None = None

    def step(self, workers: int) -> Decision | None:
        """One decision for a pool of ``workers``; None while another autoscaler holds the
        queue (this one then leaves its pool as it is)."""
        held = self.broker.hold_lease(LEASE_NAME, self.holder, 3 * self.interval_s)
        if held != self._holding:  # said when it changes, not every interval
            self._holding = held
            log.info(
                "autoscaler: %s queue %s (%d..%d workers, a decision every %g s)",
                "deciding for" if held else "another autoscaler decides for",
                self.metrics.queue, self.config.min_workers, self.config.max_workers,
                self.interval_s,
            )  # fmt: skip
        if not held:
            return None
        now = self.broker.now()
        observation = dataclasses.replace(
            self.observer.observe(workers),
            last_change_at=self.last_change_at,
            low_since=self.low_since,
        )
        decision = decide(observation, self.config, now)
        if decision.workers != workers:
            self.last_change_at = now
            log.info("autoscaler: %s", decision.reason)
        else:
            log.debug("autoscaler: %s", decision.reason)
        self.low_since = decision.low_since
        self.metrics.record(decision)
        return decision

    def close(self) -> None:
        self.broker.release_lease(LEASE_NAME, self.holder)
