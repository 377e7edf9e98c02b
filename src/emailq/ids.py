"""Message ids: time-ordered, so that sorting by id is sorting by creation.

The layout is ULID's: 48 bits of milliseconds, then 80 random bits, in Crockford base32.
Within one process ids are strictly increasing (the random part counts up inside a
millisecond), so messages enqueued together keep their order wherever ids break ties.
"""

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A 26-character id, greater than every id this process made before."""
    global _last
    candidate = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _lock:
        value = candidate if candidate > _last else _last + 1
        _last = value
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
