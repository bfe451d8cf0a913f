"""Block tasks: the one way the non-model stages map work over a slide.

A stage cuts the slide into a modest number of chunk-aligned blocks
(:func:`tiled_seg.tiling.plan_blocks`, about the tile grid, not the chunk
grid), runs one task per block that reads what it needs with direct region
reads, and merges the small per-block results in a fixed tree
(:func:`tree_reduce`), so the result does not depend on the order tasks
finish. :func:`compute_blocks` runs such a graph on the current distributed
client, reporting ``progress(stage, done, total)`` as blocks finish, or on
dask's local scheduler when there is no client. Results that grow with the
slide's cells are merged by the caller instead, as they arrive
(:func:`gather_reduce`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed

__all__ = [
    "FAN_IN", "Progress", "compute_blocks", "gather_reduce", "shared", "store_blocks", "tree_reduce",
]

#: Called as ``progress(stage, done, total)`` while a stage's tasks finish.
Progress = Callable[[str, int, int], None]

#: Partial results merged per reduction task.
FAN_IN = 8

T = TypeVar("T")


def shared(value: Any) -> Any:
    """``value`` as one graph key, for an argument that every block task takes.

    Passed as is, the argument (a reader, a job record) is walked for dask
    collections and tokenized once per task, and shipped with every task;
    as one key it is tokenized and shipped once. On a distributed client it
    is scattered to every worker: a key held by one worker would draw every
    block task to that worker until the scheduler learns their cost (a
    second worker sat idle for 1.4 s of a 7 s measure pass at 4096 px).
    """
    client = _current_client()
    if client is None:
        return dask.delayed(value, traverse=False)
    # In a list: scatter would send a dict's or a list's items one by one.
    (future,) = client.scatter([value], broadcast=True, hash=False)
    return future


def tree_reduce(parts: Sequence[Any], combine: Callable[[list[T]], T], fan_in: int = FAN_IN) -> Delayed:
    """Merge delayed ``parts`` with ``combine`` in a fixed tree of fan-in ``fan_in``.

    There is always at least one merge, so a single part is passed through
    ``combine`` too. Memory stays at ``fan_in`` partials per merge.

    >>> tree_reduce([dask.delayed(i) for i in range(20)], sum).compute()
    190
    """
    merge = dask.delayed(combine, pure=True)
    level = [merge(list(parts[i : i + fan_in])) for i in range(0, max(len(parts), 1), fan_in)]
    while len(level) > 1:
        level = [merge(level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0]


def _current_client() -> Any | None:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute_blocks(
    leaves: Sequence[Delayed], root: Delayed, stage: str, progress: Progress | None = None
) -> Any:
    """Compute ``root``, reporting ``progress(stage, done, len(leaves))`` per finished leaf.

    Parameters
    ----------
    leaves : sequence of Delayed
        The block tasks ``root`` depends on.
    root : Delayed
        The merged result (e.g. from :func:`tree_reduce`).
    stage : str
        Stage name passed to ``progress``.
    progress : callable, optional

    Returns
    -------
    The value of ``root``.
    """
    client = _current_client()
    if client is None or progress is None:
        (value,) = dask.compute(root)
        return value
    from distributed import as_completed

    futures = client.compute([*leaves, root])
    leaf_futures, root_future = futures[:-1], futures[-1]
    total = len(leaf_futures)
    progress(stage, 0, total)
    for done, _ in enumerate(as_completed(leaf_futures), start=1):
        progress(stage, done, total)
    return root_future.result()


def gather_reduce(
    leaves: Sequence[Delayed], combine: Callable[[list[T]], T], stage: str,
    progress: Progress | None = None,
) -> T:
    """``combine`` of the values of ``leaves`` (in their order), merged by the caller.

    For results that grow with the slide (per-cell partials), where a merge
    mostly concatenates (few cells span blocks): a merge task would hold
    all its inputs and their copy. Here each block's result is fetched as it
    finishes and released on its worker, so a worker holds a few blocks'
    results, whatever the slide's size, and the caller, which receives the
    whole result anyway, merges once.

    >>> gather_reduce([dask.delayed(i) for i in range(20)], sum, "sum")
    190
    """
    client = _current_client()
    if client is None:
        return combine(list(dask.compute(*leaves)))
    from distributed import as_completed

    futures = client.compute(list(leaves))
    position = {id(future): i for i, future in enumerate(futures)}
    values: list[Any] = [None] * len(futures)
    finished = as_completed(futures, with_results=True)
    del futures
    if progress is not None:
        progress(stage, 0, len(values))
    for done, (future, value) in enumerate(finished, start=1):
        values[position[id(future)]] = value
        if progress is not None:
            progress(stage, done, len(values))
    return combine(values)


def _store_block(block: np.ndarray, targets: Sequence[tuple[Any, int]], where: tuple[slice, ...]) -> int:
    for target, step in targets:
        every_step = (slice(None, None, step),) * block.ndim
        target[tuple(slice(s.start // step, -(-s.stop // step)) for s in where)] = block[every_step]
    return 0


def _count(parts: list[int]) -> int:
    return sum(parts)


def store_blocks(
    writes: Sequence[tuple[da.Array, Sequence[tuple[Any, int]]]], stage: str,
    progress: Progress | None = None, done: int = 0, total: int | None = None,
) -> int:
    """Write each ``(array, targets)`` of ``writes`` (e.g. into zarr arrays), one task per dask block.

    ``targets`` are ``(target, step)`` pairs: each target gets every
    ``step``-th element of ``array`` along every axis (1: the array itself;
    2, 4 ...: the levels of a pyramid taken by nearest neighbour), from the
    same computed block. All writes run in one computation. Each task
    computes its block and writes it itself, so blocks never travel to the
    caller; blocks should start at multiples of every ``step`` and cover
    whole chunks of their targets. ``progress(stage, done + finished,
    total)`` is reported as blocks are written, so several calls can share
    one count.

    Returns
    -------
    int
        ``done`` plus the number of blocks written.
    """
    task = dask.delayed(_store_block, pure=False)
    leaves = []
    for array, targets in writes:
        # One key: a zarr array is a dataclass, which dask would walk field by
        # field and tokenize for every task it is passed to.
        targets_key = dask.delayed(list(targets), traverse=False)
        edges = [np.cumsum((0, *sizes)) for sizes in array.chunks]
        for index, block in zip(np.ndindex(*array.numblocks), array.to_delayed().ravel()):
            where = tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, index))
            leaves.append(task(block, targets_key, where))
    total = done + len(leaves) if total is None else total
    offset = None if progress is None else (lambda s, n, _: progress(s, done + n, total))
    compute_blocks(leaves, tree_reduce(leaves, _count), stage, offset)
    return done + len(leaves)
