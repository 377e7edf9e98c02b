"""The receiving end of benchmarks/e2e.py: an SMTP responder that clocks each arrival.

``sinkclock.c`` (built here with the system's C compiler on first use) takes mail like
Postfix's smtp-sink, at a similar cost, and also writes each message's Message-ID with the
time its final "." arrived. That is what critical latency is measured by: arrival at the
sink minus the time the email was queued, the same for emailq and for the peers. With a
``delay_ms`` it holds every reply that long, as a relay in the same region would.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from peers.harness import free_port, stop, wait_for_port

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "sinkclock.c"
BUILD_DIR = HERE.parent / ".venv" / "bench-bin"


def binary() -> Path:
    """The built responder, rebuilt whenever sinkclock.c changes (its hash is in the name)."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    built = BUILD_DIR / f"sinkclock-{digest}"
    if built.exists():
        return built
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        sys.exit("benchmarks/sinkclock.c needs a C compiler: apt-get install -y gcc")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = built.with_suffix(".partial")
    subprocess.run([compiler, "-O2", "-o", str(partial), str(SOURCE)], check=True, timeout=120)
    partial.replace(built)
    return built


def message_key(message_id: str) -> str:
    """``<abc@host>`` → ``abc``: emailq's message id, or the peers' ``TAG-i``."""
    return message_id.strip("<>").partition("@")[0]


@dataclass
class SinkClock:
    port: int
    delay_ms: float
    arrivals_file: Path
    mark: int = 0  # where the current run's arrivals start in the file

    def start_run(self) -> None:
        """Arrivals read from now on are the next run's only."""
        self.mark = self.arrivals_file.stat().st_size

    def arrivals(self, wanted: Collection[str], wait_s: float = 2.0) -> dict[str, float]:
        """Arrival time (``time.time()`` scale) of each wanted key the sink has seen.

        The sink writes after each round of events: a message the client already has a 250
        for may be written a moment later, hence the short wait for stragglers.
        """
        wanted = set(wanted)
        until = time.monotonic() + wait_s
        while True:
            found: dict[str, float] = {}
            with self.arrivals_file.open("rb") as arrivals:
                arrivals.seek(self.mark)
                for line in arrivals:
                    message_id, _, at = line.decode(errors="replace").rpartition(" ")
                    if (key := message_key(message_id)) in wanted and at.strip():
                        found.setdefault(key, float(at))  # a re-send: the first arrival counts
            if len(found) == len(wanted) or time.monotonic() > until:
                return found
            time.sleep(0.05)

    def connections(self) -> int:
        """Established TCP connections to the sink now (from /proc/net/tcp)."""
        local = f":{self.port:04X}"
        count = 0
        with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
            for row in table:
                fields = row.split()
                # local address, remote address, state: 01 is ESTABLISHED
                if len(fields) > 3 and fields[1].endswith(local) and fields[3] == "01":
                    count += 1
        return count


@contextlib.contextmanager
def sink_clock(delay_ms: float = 0.0) -> Iterator[SinkClock]:
    """The responder on a free port; stopped on the way out, errors included."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sinkclock-") as tmp:
        out = Path(tmp) / "arrivals.txt"
        command = [str(binary()), str(port), str(round(delay_ms * 1000)), str(out)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port, proc)
            yield SinkClock(port, delay_ms, out)
        finally:
            stop(proc, 5)
