"""The worker pool while the load runs: sized by emailq's own autoscaler (``--autoscale
MIN:MAX``) or fixed, sampled so the report can state the worker-minutes it used.

The scenarios compress a day into minutes, so the autoscaler's clock-bound settings are
compressed with them (:data:`COMPRESSED`): a decision every 2 s, growing again after 5 s,
shrinking a step after 15 s of lower demand. The weekly pattern, the season and the
protected hours are off: the wall clock's weekday says nothing about a compressed Saturday.
Everything else (lane deadlines, headroom, the assumed rate per worker, the emergency
level) is the queue's own setting (``EMAILQ_AUTOSCALE_*`` or the file), as in ``emailq run``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from emailq.autoscale.controller import Autoscaler, config_from_settings
from emailq.autoscale.policy import AutoscaleConfig
from emailq.clock import now
from emailq.deployment import Deployment
from emailq.settings import Settings
from emailq_loadtest.service import WorkerPool

log = logging.getLogger(__name__)

COMPRESSED: dict[str, Any] = {
    "interval_s": 2.0, "up_cooldown_s": 5.0, "down_after_s": 15.0, "down_cooldown_s": 15.0,
    "pattern": "", "season": "", "protected": "",
}  # fmt: skip
SAMPLE_S = 1.0  # a fixed pool is only sampled
MAX_CHANGES = 200  # decisions that changed the pool, kept with their reasons for the report


def autoscale_config(low: int, high: int) -> tuple[AutoscaleConfig, float]:
    """The queue's autoscale settings with the run's bounds and the compressed clock; the
    config and the seconds between decisions."""
    section = Settings.load().autoscale.model_copy(
        update={**COMPRESSED, "min_workers": low, "max_workers": high}
    )
    return config_from_settings(section), section.interval_s


@dataclass
class PoolWatch:
    """Samples the pool (and, autoscaled, decides for it) from ``start`` until ``stop``."""

    pool: WorkerPool
    broker_url: str
    bounds: tuple[int, int] | None = None  # None: a fixed pool, only watched
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, running, pool
    changes: list[tuple[float, int, str]] = field(default_factory=list)  # t, pool, reason
    decisions: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0, "hold": 0})
    errors: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _config: tuple[AutoscaleConfig, float] | None = None

    def __post_init__(self) -> None:
        # Read now, so that a bad EMAILQ_AUTOSCALE_* setting stops the run before it starts.
        if self.bounds is not None:
            self._config = autoscale_config(*self.bounds)

    def begin(self, start: float) -> None:
        self.start = start
        self._thread = threading.Thread(target=self._run, name="pool-watch", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        if self._thread is None or self.end is not None:
            return
        self._stop.set()
        self._thread.join(30)
        self.end = now()
        self._sample()

    def _sample(self) -> None:
        self.samples.append((now() - self.start, self.pool.running, len(self.pool.processes)))

    def _run(self) -> None:
        if self._config is None:
            while not self._stop.wait(SAMPLE_S):
                self._sample()
            return
        assert self._config is not None
        config, interval = self._config
        with Deployment.from_url(self.broker_url) as deployment:
            autoscaler = Autoscaler(deployment.broker, config, interval)
            try:
                self._sample()
                while not self._stop.wait(interval):
                    self._decide(autoscaler)
                    self._sample()
            finally:
                autoscaler.close()

    def _decide(self, autoscaler: Autoscaler) -> None:
        try:
            decision = autoscaler.step(len(self.pool.processes))
        except Exception as error:  # one decision lost is reported, not fatal to the run
            log.exception("autoscaler: no decision this time")
            self.errors.append(f"autoscaler: {type(error).__name__}: {error}")
            return
        if decision is None:
            return
        self.decisions[decision.direction] += 1
        if decision.workers != len(self.pool.processes):
            self.pool.resize(decision.workers)
            if len(self.changes) < MAX_CHANGES:
                self.changes.append((now() - self.start, decision.workers, decision.reason))

    def worker_minutes(self) -> float:
        """Processes running (stopping ones too) integrated over the watched time."""
        total = 0.0
        for (t, running, _), (t_next, _, _) in zip(self.samples, self.samples[1:], strict=False):
            total += running * (t_next - t)
        return total / 60

    def figures(self) -> dict[str, Any]:
        span = self.samples[-1][0] if self.samples else 0.0
        used = self.worker_minutes()
        peak = max((running for _, running, _ in self.samples), default=0)
        out: dict[str, Any] = {
            "mode": "fixed" if self.bounds is None else "autoscaled",
            "span_s": round(span, 1),
            "worker_minutes": round(used, 2),
            "mean_workers": round(used * 60 / span, 2) if span else 0.0,
            "peak_running": peak,
            "timeline": [[round(t, 1), running, pool] for t, running, pool in self.samples],
        }
        if self.bounds is not None:
            low, high = self.bounds
            fixed = high * span / 60
            out |= {
                "min": low, "max": high,
                "fixed_pool_of_max_worker_minutes": round(fixed, 2),
                "share_of_fixed_pool": round(used / fixed, 3) if fixed else 0.0,
                "decisions": dict(self.decisions),
                "changes": [[round(t, 1), n, why] for t, n, why in self.changes],
                "compressed_settings": dict(COMPRESSED),
            }  # fmt: skip
        return out
