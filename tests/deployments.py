"""Deployments for tests: the settings given and the defaults, nothing else."""

from __future__ import annotations

import time
from typing import Any

import httpx

from emailq.deployment import Deployment
from emailq.settings import Settings


def deployment_for(url: str, **sections: Any) -> Deployment:
    """A deployment of the queue at ``url`` with these settings and the defaults: nothing
    read from the environment or a file, so a developer's EMAILQ_* cannot leak in."""
    return Deployment(Settings(broker={"url": url}, **sections))


def wait_for_api(base: str, timeout: float = 30) -> None:
    """Until ``emailq serve`` at ``base`` answers ``/health`` with 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"emailq serve at {base} did not start"
        time.sleep(0.1)
