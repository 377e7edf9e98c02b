"""Delivery into a folder: one ``<message_id>.eml`` file a message, maildir style.

A message is written under ``tmp/``, flushed to disk, then renamed into ``new/`` with
``os.replace``, so a reader of ``new/`` never sees half a message, and a crash leaves at
most a stray file in ``tmp/``. A message id already in ``new/`` is not written again: a
retried message gives the same file. An ``OSError`` (disk full, permissions) is transient.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from emailq.providers.base import (
    Accepted,
    Permanent,
    Provider,
    Rendered,
    SendGate,
    SendResult,
    Transient,
    Withheld,
)

# A message id becomes a file name: no separators, no leading dot, nothing to escape.
_SAFE_ID = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")


class FileProvider(Provider):
    name = "file"

    def __init__(self, folder: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.fsync = fsync  # False trades crash safety for speed (demos, load tests)

    def path_of(self, message_id: str) -> Path:
        """Where a delivered message is: ``<folder>/new/<message_id>.eml``."""
        return self.folder / "new" / f"{message_id}.eml"

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        # Why one thread for the batch: blocking file I/O off the event loop, without a
        # thread hand-off per message. The gate is asked on the loop, just before.
        allowed = [await gate.may_send(message.message_id) for message in batch]
        chosen = [message for message, ok in zip(batch, allowed, strict=True) if ok]
        written = iter(await asyncio.to_thread(self._write_all, chosen))
        return [next(written) if ok else Withheld("the lease may have lapsed") for ok in allowed]

    def _write_all(self, batch: list[Rendered]) -> list[SendResult]:
        try:
            for name in ("tmp", "new"):
                (self.folder / name).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return [_transient(error)] * len(batch)
        results = [self._write(message) for message in batch]
        if self.fsync and any(isinstance(r, Accepted) for r in results):
            try:
                _fsync_dir(self.folder / "new")  # make the renames themselves durable
            except OSError as error:
                return [_transient(error) if isinstance(r, Accepted) else r for r in results]
        return results

    def _write(self, message: Rendered) -> SendResult:
        if not _SAFE_ID.fullmatch(message.message_id):
            return Permanent("message id is not usable as a file name")
        final = self.path_of(message.message_id)
        if final.exists():
            return Accepted(str(final))  # written before: once is enough
        temporary = (
            self.folder / "tmp" / f"{message.message_id}.{os.getpid()}.{os.urandom(6).hex()}"
        )
        try:
            with open(temporary, "xb") as file:
                file.write(message.data)
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(temporary, final)
        except OSError as error:
            _remove(temporary)
            return _transient(error)
        return Accepted(str(final))


def _transient(error: OSError) -> Transient:
    # strerror, not str(error): keep the reason short, without the folder's path.
    return Transient(f"file: {type(error).__name__}: {error.strerror or error}")


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    # A stray file in tmp/ is harmless; the write's own error is the one to report.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
