"""The file provider: one ``<message_id>.eml`` a message, written atomically, once."""

from __future__ import annotations

import asyncio
import contextlib
import email
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from email.policy import SMTP, default
from pathlib import Path

import pytest

from emailq.providers.base import Accepted, Permanent, Rendered, SendResult, Transient
from emailq.providers.factory import open_provider
from emailq.providers.file import FileProvider

NOBODY = 65534


def make(message_id: str = "01msg00001", subject: str = "Hello") -> Rendered:
    message = EmailMessage()
    message["From"] = "Planner <planner@weddings.example>"
    message["To"] = "Guest <guest@example.com>"
    message["Subject"] = subject
    message.set_content("Plain body\n")
    message.add_alternative("<p>HTML body</p>\n", subtype="html")
    message.add_attachment(b"%PDF-1.7", "application", "pdf", filename="plan.pdf")
    data = message.as_bytes(policy=SMTP)
    return Rendered(message_id, "planner@weddings.example", ("guest@example.com",), data)


def send(provider: FileProvider, batch: Sequence[Rendered]) -> list[SendResult]:
    return asyncio.run(provider.send_batch(batch))


def files(folder: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (folder / sub).iterdir())


def test_each_message_is_a_file_that_parses_as_the_same_message(tmp_path: Path) -> None:
    messages = [make("01msg00001", "First"), make("01msg00002", "Second")]
    results = send(FileProvider(tmp_path), messages)
    assert results == [
        Accepted(str(tmp_path / "new" / "01msg00001.eml")),
        Accepted(str(tmp_path / "new" / "01msg00002.eml")),
    ]
    for message, result in zip(messages, results, strict=True):
        assert isinstance(result, Accepted)
        data = Path(result.provider_id).read_bytes()
        assert data == message.data
        parsed = email.message_from_bytes(data, policy=default)
        original = email.message_from_bytes(message.data, policy=default)
        assert parsed["Subject"] == original["Subject"] and parsed["To"] == original["To"]
        assert [p.get_content() for p in parsed.walk() if not p.is_multipart()] == [
            p.get_content() for p in original.walk() if not p.is_multipart()
        ]
    assert files(tmp_path, "tmp") == []  # written under tmp/, then moved: nothing left behind


def test_the_same_message_twice_is_one_file(tmp_path: Path) -> None:
    provider = FileProvider(tmp_path)
    first = send(provider, [make(subject="Original")])
    again = send(provider, [make(subject="Re-rendered"), make(subject="Twice in a batch")])
    assert again == first * 2
    assert files(tmp_path, "new") == ["01msg00001.eml"]
    assert b"Subject: Original" in (tmp_path / "new" / "01msg00001.eml").read_bytes()


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the data was written, then flushing fails
    (result,) = send(FileProvider(tmp_path), [make()])
    assert result == Transient("file: OSError: No space left on device")
    assert files(tmp_path, "new") == [] and files(tmp_path, "tmp") == []
    monkeypatch.undo()
    assert isinstance(send(FileProvider(tmp_path), [make()])[0], Accepted)  # a retry works


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run as nobody when we are root, who ignores permission bits."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def read_only_folder() -> Iterator[Path]:
    # Not tmp_path: its parents are private to root, so nobody could not even look in.
    folder = Path(tempfile.mkdtemp(prefix="emailq-file-"))
    (folder / "tmp").mkdir()
    (folder / "new").mkdir()
    (folder / "new" / "01delivered.eml").write_bytes(make("01delivered").data)
    read_only = (
        stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    )
    for path in (folder, folder / "tmp", folder / "new"):
        path.chmod(read_only)
    yield folder
    for path in (folder, folder / "tmp", folder / "new"):
        path.chmod(stat.S_IRWXU)
    shutil.rmtree(folder)


def test_a_read_only_folder_is_transient(read_only_folder: Path) -> None:
    with unprivileged():
        results = send(FileProvider(read_only_folder), [make("01msg00009"), make("01delivered")])
    assert results[0] == Transient("file: PermissionError: Permission denied")
    assert results[1] == Accepted(str(read_only_folder / "new" / "01delivered.eml"))  # already


def test_a_folder_that_cannot_be_made_is_transient(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the folder should be")
    results = send(FileProvider(tmp_path / "blocked" / "mail"), [make(), make("01msg00002")])
    assert all(isinstance(r, Transient) and r.reason.startswith("file: ") for r in results)


@pytest.mark.parametrize("message_id", ["../escape", ".hidden", "a/b", ""])
def test_an_id_that_is_not_a_file_name_is_permanent(tmp_path: Path, message_id: str) -> None:
    (result,) = send(FileProvider(tmp_path), [make(message_id)])
    assert isinstance(result, Permanent)
    assert files(tmp_path, "new") == []


def test_factory_opens_a_folder(tmp_path: Path) -> None:
    provider = open_provider(f"file://{tmp_path}/outbox")
    assert isinstance(provider, FileProvider) and provider.folder == tmp_path / "outbox"
    assert isinstance(send(provider, [make()])[0], Accepted)
