"""What a run records: the output store's run state, the scratch store and its manifest.

The run state
-------------
The output store's ``tiled_seg`` attribute is a :class:`RunState`: whether a
run is ``running``, ``failed`` or ``complete``, its configuration, slide
statistics, full tile grid and, once complete, its summary. Every reader
(``tiled-seg info``, the report, resume checks) reads it through
:meth:`RunState.read`, never as a raw dict.

The scratch store
-----------------
A run keeps its tile labels in a scratch zarr beside the output store. Each
tile task writes its labels there first and then, as a separate small write,
a record under ``manifest/<tile index>`` holding what the tile returned (core
ids, nucleus ids, seconds, non-finite pixels). A record therefore exists only
for a tile whose labels are already stored; zarr writes each key whole (a
temporary file renamed into place on disk, one PUT on object stores), so a
killed process leaves either the old key or the new one. A resumed run
re-uses the recorded tiles and segments the rest; tile tasks are idempotent,
so a tile written twice holds the same bytes.

The scratch store carries a fingerprint of the inputs and configuration; a
resume whose fingerprint differs is refused rather than mixing two runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from tiled_seg.errors import ResumeError
from tiled_seg.io.fs import exists, remove_tree
from tiled_seg.segment.normalize import SlideStats
from tiled_seg.tiling import Tile, TileGrid

__all__ = [
    "RUN_STATE_KEY",
    "RunState",
    "TileResult",
    "ScratchLabels",
    "scratch_array",
    "write_scratch",
    "prepare_scratch",
    "SCRATCH_SUFFIX",
    "scratch_path",
    "fingerprint",
    "create_scratch",
    "check_scratch",
    "record_tile",
    "read_records",
    "count_records",
]

#: Key of the output store's attributes under which a run records its state.
RUN_STATE_KEY = "tiled_seg"

#: Run states whose labels are not a result: a failed run, or one interrupted
#: (``running`` while no live run holds the store's lock).
UNFINISHED = ("failed", "running")


@dataclass(frozen=True)
class RunState:
    """The run record of an output store.

    Attributes
    ----------
    source : str or None
        The input image store, for a separate output store.
    status : str or None
        ``running``, ``failed`` or ``complete``; None before a run started.
    version : str or None
        tiled_seg version of the run.
    started, finished : str or None
        ISO 8601 times (UTC).
    input_key : str
        Fingerprint of the inputs and configuration; a resume must match it.
    writes : tuple of str
        Label images the run writes (partial while it is unfinished).
    config : dict or None
        The configuration, secrets redacted.
    stats : dict or None
        Slide statistics (:meth:`SlideStats.to_dict`).
    grid : TileGrid or None
        The run's full tile grid (cores aligned to the chunk per axis).
    error : str or None
        What a failed run raised.
    summary : dict or None
        The complete run's summary (:meth:`RunResult.to_summary`).
    """

    source: str | None = None
    status: str | None = None
    version: str | None = None
    started: str | None = None
    finished: str | None = None
    input_key: str = ""
    writes: tuple[str, ...] = ()
    config: dict[str, Any] | None = field(default=None, compare=False)
    stats: dict[str, Any] | None = None
    grid: TileGrid | None = None
    error: str | None = None
    summary: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def unfinished(self) -> bool:
        """Whether the store holds a failed or interrupted run."""
        return self.status in UNFINISHED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the store attribute); unset fields are left out."""
        record: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None or (item.name in ("input_key", "writes") and not value):
                continue
            if isinstance(value, TileGrid):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            record[item.name] = value
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunState:
        """Inverse of :meth:`to_dict`; keys of other versions are ignored."""
        known = {item.name for item in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if values.get("grid") is not None:
            values["grid"] = TileGrid.from_dict(values["grid"])
        values["writes"] = tuple(values.get("writes", ()))
        return cls(**values)

    @classmethod
    def read(cls, store: str) -> RunState | None:
        """The run state of ``store``; None when it has none or is no zarr group."""
        if not exists(store):
            return None
        try:
            record = zarr.open_group(store, mode="r").attrs.get(RUN_STATE_KEY)
        except (OSError, ValueError):  # a folder or file that is no zarr group
            return None
        return cls.from_dict(record) if isinstance(record, dict) else None

    def write(self, store: str) -> None:
        """Replace the run state of ``store``."""
        zarr.open_group(store, mode="a").attrs[RUN_STATE_KEY] = self.to_dict()

    def replace(self, **changes: Any) -> RunState:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


#: Appended to the output store's path to name its scratch store.
SCRATCH_SUFFIX = ".tiled_seg_scratch"
_MANIFEST = "manifest"


@dataclass(frozen=True)
class TileResult:
    """Small summary a tile task returns (and records in the manifest).

    Attributes
    ----------
    index : int
        Tile index in the grid.
    core_ids : ndarray of int64
        Sorted local ids with a pixel in the tile's core.
    core_nucleus_ids : ndarray of int64 or None
        The same for the linked nuclei, when the backend gives them.
    segment_seconds : float
        Time spent in the backend (s).
    nonfinite_px : int
        NaN or infinite pixels in the tile's core, over all channels read;
        they are treated as 0.
    """

    index: int
    core_ids: np.ndarray
    core_nucleus_ids: np.ndarray | None
    segment_seconds: float
    nonfinite_px: int = 0

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "index": self.index,
            "core_ids": self.core_ids.tolist(),
            "core_nucleus_ids": None if self.core_nucleus_ids is None else self.core_nucleus_ids.tolist(),
            "segment_seconds": self.segment_seconds,
            "nonfinite_px": self.nonfinite_px,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TileResult":
        """Inverse of :meth:`to_record`."""
        nuclei = record["core_nucleus_ids"]
        return cls(
            index=int(record["index"]),
            core_ids=np.asarray(record["core_ids"], dtype=np.int64),
            core_nucleus_ids=None if nuclei is None else np.asarray(nuclei, dtype=np.int64),
            segment_seconds=float(record["segment_seconds"]),
            nonfinite_px=int(record.get("nonfinite_px", 0)),
        )


def scratch_path(store: str) -> str:
    """The scratch store that belongs to output ``store``."""
    return f"{str(store).rstrip('/')}{SCRATCH_SUFFIX}"


def fingerprint(**parts: Any) -> str:
    """SHA-256 of JSON-serialisable ``parts`` (keys sorted), as hex.

    >>> fingerprint(a=1, b=[2]) == fingerprint(b=[2], a=1)
    True
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def create_scratch(scratch: str, key: str, shape: tuple[int, int, int], n_tiles: int) -> None:
    """Create an empty scratch store: ``objects`` and ``linked`` labels, one chunk per tile.

    Parameters
    ----------
    scratch : str
        Path or URL; replaced when it exists.
    key : str
        Fingerprint of the run, checked by :func:`check_scratch`.
    shape : tuple of int
        ``(tiles, Y, X)``: the largest halo box (px) for every tile.
    n_tiles : int
        Number of tiles, shown by ``tiled-seg info`` while a run is incomplete.
    """
    group = zarr.open_group(scratch, mode="w")
    for name in ("objects", "linked"):
        group.create_array(name, shape=shape, chunks=(1, *shape[1:]), dtype=np.uint32, fill_value=0)
    group.create_group(_MANIFEST)
    # Written last: a scratch store without its key is never resumed.
    group.attrs.update({"fingerprint": key, "n_tiles": n_tiles})


def _open(scratch: str) -> zarr.Group | None:
    try:
        return zarr.open_group(scratch, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return None


def check_scratch(scratch: str, key: str) -> bool:
    """Whether ``scratch`` holds an interrupted run with fingerprint ``key``.

    Returns False when there is no usable scratch store (the run starts its
    tiles over).

    Raises
    ------
    ResumeError
        The scratch store belongs to a run with other inputs or configuration.
    """
    group = _open(scratch)
    if group is None or "fingerprint" not in group.attrs:
        return False
    if group.attrs["fingerprint"] != key:
        raise ResumeError(
            f"{scratch} holds tiles of a run with a different input or configuration "
            "(fingerprint mismatch); resume with the original configuration, or rerun "
            "without --resume and with --overwrite to start over."
        )
    return True


def record_tile(scratch: str, result: TileResult) -> None:
    """Record a finished tile; call only after its labels are written."""
    manifest = zarr.open_group(f"{scratch}/{_MANIFEST}", mode="r+")
    manifest.create_group(str(result.index), attributes=result.to_record(), overwrite=True)


def read_records(scratch: str) -> dict[int, TileResult]:
    """Recorded tiles of ``scratch`` by index; unreadable records are left out."""
    group = _open(scratch)
    if group is None or _MANIFEST not in group:
        return {}
    records: dict[int, TileResult] = {}
    for name, member in group[_MANIFEST].groups():
        try:
            result = TileResult.from_record(member.attrs.asdict())
        except (KeyError, TypeError, ValueError):
            continue
        if str(result.index) == name:
            records[result.index] = result
    return records


def count_records(scratch: str) -> tuple[int, int] | None:
    """``(recorded, total)`` tiles of an interrupted run, or None without scratch."""
    group = _open(scratch)
    if group is None or "n_tiles" not in group.attrs or _MANIFEST not in group:
        return None
    return len(list(group[_MANIFEST].group_keys())), int(group.attrs["n_tiles"])


@dataclass(frozen=True)
class ScratchLabels:
    """Label source of the stitch: a tile's labels from scratch array ``name``.

    ``name`` is ``objects`` (the primary labels) or ``linked`` (nuclei linked
    to the cells by id). Picklable, so workers read the labels themselves.
    """

    scratch: str
    name: str

    def __call__(self, tile: Tile) -> np.ndarray:
        height, width = tile.halo.shape
        return scratch_array(self.scratch, self.name)[tile.index, :height, :width]


def scratch_array(scratch: str, name: str) -> zarr.Array:
    """The ``(tile, Y, X)`` scratch array ``name`` (``objects`` or ``linked``), writable."""
    return zarr.open_array(f"{scratch}/{name}", mode="r+")


def write_scratch(scratch: str, name: str, tile: Tile, labels: np.ndarray) -> None:
    """Write a tile's labels as its whole scratch chunk.

    A whole-chunk write never reads the old chunk, so a chunk left damaged by
    a killed task is replaced, and rewriting a tile gives the same bytes.
    """
    array = scratch_array(scratch, name)
    chunk = np.zeros(array.shape[1:], dtype=np.uint32)
    chunk[: labels.shape[0], : labels.shape[1]] = labels
    array[tile.index] = chunk


def prepare_scratch(
    store: str, input_key: str, stats: SlideStats, grid: TileGrid, halo_px: int, resume: bool
) -> tuple[str, dict[int, TileResult]]:
    """The scratch store of ``store`` and the tiles an interrupted run already recorded there.

    The scratch key includes the statistics and the tiling, so tiles
    segmented with other numbers are never mixed into a resumed run; without
    a usable scratch a fresh one is created and no tile counts as done.

    Parameters
    ----------
    store : str
        The output store; the scratch store sits beside it.
    input_key : str
        Fingerprint of the inputs and configuration.
    stats : SlideStats
        The slide statistics the tiles are normalised with.
    grid : TileGrid
        The run's tiles.
    halo_px : int
        Halo width (px); the scratch holds each tile's extended box.
    resume : bool
        Reuse the recorded tiles of a matching scratch store.
    """
    scratch = scratch_path(store)
    scratch_key = fingerprint(input=input_key, stats=stats.to_dict(), tile_px=grid.tile_px,
                              halo_px=halo_px)
    if resume and check_scratch(scratch, scratch_key):
        return scratch, read_records(scratch)
    remove_tree(scratch)
    extended = (len(grid.tiles), grid.tile_px[0] + 2 * halo_px, grid.tile_px[1] + 2 * halo_px)
    create_scratch(scratch, scratch_key, extended, len(grid.tiles))
    return scratch, {}
