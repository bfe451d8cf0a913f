"""Block-task helpers: the merge by the caller keeps the leaves' order."""

from __future__ import annotations

import time

import dask

from tiled_seg.blocks import gather_reduce


def _slow_value(value: int, delay_s: float) -> int:
    time.sleep(delay_s)
    return value


def _leaves(n: int) -> list:
    # The first leaves finish last.
    task = dask.delayed(_slow_value, pure=True)
    return [task(value, 0.05 * (n - value)) for value in range(n)]


def test_gather_reduce_merges_in_leaf_order_on_a_cluster(client) -> None:
    reports = []
    with client.as_current():
        merged = gather_reduce(_leaves(6), list, "blocks", lambda *report: reports.append(report))
    assert merged == list(range(6))
    assert reports == [("blocks", done, 6) for done in range(7)]
    deadline = time.monotonic() + 10
    while client.who_has() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.who_has(), "block results stayed on the workers after the merge"


def test_gather_reduce_without_a_cluster_gives_the_same_merge() -> None:
    assert gather_reduce(_leaves(4), list, "blocks") == [0, 1, 2, 3]
