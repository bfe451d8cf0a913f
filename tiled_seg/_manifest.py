"""Per-tile records of a run, so an interrupted run resumes where it stopped.

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

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from tiled_seg.errors import ResumeError

__all__ = [
    "TileResult",
    "SCRATCH_SUFFIX",
    "scratch_path",
    "fingerprint",
    "create_scratch",
    "check_scratch",
    "record_tile",
    "read_records",
    "count_records",
]

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
