"""Everything a broker holds, as bytes: every SQLite table's rows (and the files), every
Redis key under the queue's prefix read by its type. Tests search it for what must be gone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from emailq.broker import Broker
from emailq.broker.redis import RedisBroker
from emailq.broker.sqlite import SQLiteBroker


def dump(broker: Broker) -> bytes:
    if isinstance(broker, SQLiteBroker):
        return _sqlite_rows(broker.path)
    assert isinstance(broker, RedisBroker)
    return _redis_keys(broker)


def sqlite_files(path: str) -> bytes:
    """The database file and its write-ahead log, raw (free pages included)."""
    return b"".join(p.read_bytes() for p in (Path(path), Path(f"{path}-wal")) if p.exists())


def _sqlite_rows(path: str) -> bytes:
    out: list[bytes] = []
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f"SELECT * FROM {table}"):
                out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    return b"\n".join(out)


def _redis_keys(broker: RedisBroker) -> bytes:
    client, out = broker.client, []
    for key in client.scan_iter(match=f"{broker.keys.tag}:*", count=1000):
        out.append(key)
        kind = client.type(key).decode()
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            out += [x for pair in client.hgetall(key).items() for x in pair]
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(client.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":  # the audit feed webhooks read
            out += [x for _, fields in client.xrange(key) for pair in fields.items() for x in pair]
        else:
            raise AssertionError(f"a key of an unexpected type: {key!r} is {kind}")
    return b"\n".join(out)
