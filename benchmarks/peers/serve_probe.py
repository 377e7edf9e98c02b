"""``python benchmarks/peers/serve_probe.py LOG -- emailq args…``: runs ``emailq`` with a
garbage-collector hook that appends ``[epoch, generation, milliseconds]`` to LOG for
every collection of 1 ms or more, so a benchmark can tell a GC pause from a slow request."""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import time
from typing import Any

_started: list[float] = []


def main() -> None:
    log_path, _, *args = sys.argv[1:]
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started.append(time.perf_counter())
        elif _started:
            ms = (time.perf_counter() - _started.pop()) * 1000
            if ms >= 1.0:
                log.write(json.dumps([time.time(), info["generation"], round(ms, 2)]) + "\n")

    gc.callbacks.append(hook)
    if switch_ms := os.environ.get("EMAILQ_PROBE_SWITCH_INTERVAL_MS"):
        # How long a thread waiting for the GIL lets the running one go on (default 5 ms).
        sys.setswitchinterval(float(switch_ms) / 1000)
    sys.argv = ["emailq", *args]
    runpy.run_module("emailq", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
