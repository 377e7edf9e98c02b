"""Message ids: time-ordered, so that sorting by id is sorting by creation.

32 hex digits: 48 bits of milliseconds, then 80 random bits (ULID's layout, in hex because
formatting hex is one C call where base32 took 16 µs a message in the enqueue profile).
Within one process ids are strictly increasing (the random part counts up inside a
millisecond), so messages enqueued together keep their order wherever ids break ties.
"""

import os
import threading
import time

_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A 32-character id, greater than every id this process made before."""
    global _last
    candidate = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _lock:
        value = candidate if candidate > _last else _last + 1
        _last = value
    return f"{value:032x}"


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
