"""Message ids sort in creation order, have one width, and never repeat."""

from __future__ import annotations

import threading

from emailq.ids import new_id


def test_ids_increase_within_a_process_even_inside_one_millisecond() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {len(i) for i in ids} == {32}


def test_ids_made_on_many_threads_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_id() for _ in range(5000))

    threads = [threading.Thread(target=make, args=(m,)) for m in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for m in made for i in m]
    assert len(set(every)) == len(every)
