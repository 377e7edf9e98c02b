"""Deployments for tests: the settings given and the defaults, nothing else."""

from __future__ import annotations

from typing import Any

from emailq.deployment import Deployment
from emailq.settings import Settings


def deployment_for(url: str, **sections: Any) -> Deployment:
    """A deployment of the queue at ``url`` with these settings and the defaults: nothing
    read from the environment or a file, so a developer's EMAILQ_* cannot leak in."""
    return Deployment(Settings(broker={"url": url}, **sections))
