"""Describe an OME-Zarr store: image, pyramid, labels, tables and run state.

Only metadata is read; the store is never modified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from tiled_seg.errors import NotNGFFError
from tiled_seg.io.ngff import Slide, list_labels, ome_attrs, open_group, open_slide
from tiled_seg.io.tables import list_tables
from tiled_seg.pipeline._lock import lock_holder
from tiled_seg.pipeline.state import RunState, count_records, scratch_path

__all__ = ["StoreInfo", "LabelInfo", "describe"]

#: Zarr metadata files, not tables, when listing ``tables/`` on disk.
_ZARR_METADATA = {".zattrs", ".zgroup", ".zarray", ".zmetadata", "zarr.json"}


@dataclass(frozen=True)
class LabelInfo:
    """One label image: its name, dtype and pyramid level shapes ``(Y, X)``."""

    name: str
    dtype: str
    levels: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class StoreInfo:
    """What an OME-Zarr image store holds.

    Attributes
    ----------
    path : str
        The image group that was described.
    shape : tuple of int
        Full-resolution ``(C, Y, X)`` shape (px); empty for a separate
        output store, which holds labels and tables but no image.
    dtype : str
        Pixel dtype.
    channel_names : tuple of str
    pixel_size_um : float or None
        Full-resolution pixel size (um), None when the store does not say.
    ngff_version : str
    levels : tuple of tuple of int
        ``(C, Y, X)`` shape of every pyramid level.
    labels : tuple of LabelInfo
    tables : tuple of str
        Names of the entries under ``tables/``.
    run_state : RunState or None
        The store's run state as written by a run, if any.
    tiles_recorded : tuple of int or None
        ``(recorded, total)`` tiles of an incomplete run's scratch manifest.
    chunk_yx : tuple of int
        Full-resolution chunk size ``(Y, X)`` (px); a run's tile size must
        be a multiple of it. Empty for a separate output store.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    channel_names: tuple[str, ...]
    pixel_size_um: float | None
    ngff_version: str
    levels: tuple[tuple[int, ...], ...]
    labels: tuple[LabelInfo, ...]
    tables: tuple[str, ...]
    run_state: RunState | None
    tiles_recorded: tuple[int, int] | None = None
    chunk_yx: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        record = dataclasses.asdict(self)
        record["run_state"] = None if self.run_state is None else self.run_state.to_dict()
        return record

    def format(self) -> str:
        """Human-readable multi-line description."""
        size = "unknown" if self.pixel_size_um is None else f"{self.pixel_size_um:g} um/px"
        lines = [f"store:        {self.path}", f"NGFF version: {self.ngff_version}"]
        if self.shape:
            lines += [
                f"shape (CYX):  {_shape(self.shape)}  {self.dtype}",
                f"pixel size:   {size}",
                f"chunk (YX):   {_shape(self.chunk_yx)} px (run --tile-px must be a multiple)",
                f"channels ({len(self.channel_names)}): {', '.join(self.channel_names)}",
                f"pyramid ({len(self.levels)} levels): "
                + ", ".join(_shape(s) for s in self.levels),
            ]
        else:
            source = (self.run_state and self.run_state.source) or "unknown"
            lines.append(f"image:        none (output store of {source})")
        if self.labels:
            lines.append(f"labels ({len(self.labels)}):")
            lines += [
                f"  {label.name}: {label.dtype}, levels " + ", ".join(_shape(s) for s in label.levels)
                for label in self.labels
            ]
        else:
            lines.append("labels:       none")
        lines.append(f"tables:       {', '.join(self.tables) if self.tables else 'none'}")
        if self.run_state is None:
            lines.append("run state:    none")
        else:
            lines.append("run state:")
            lines += _status_lines(self.run_state, self.path)
            if self.tiles_recorded is not None:
                lines.append(f"  tiles recorded: {self.tiles_recorded[0]} of {self.tiles_recorded[1]}")
            lines += _run_state_lines(self.run_state)
        return "\n".join(lines)


def _status_lines(state: RunState, store: str) -> list[str]:
    """What an unfinished run means for the user, and what to do about it."""
    status = state.status
    if status == "failed":
        return [
            f"  FAILED: {state.error or 'unknown error'}",
            "  (labels here are not a result; fix the cause and run again: no --overwrite "
            "needed, --resume keeps the tiles already segmented)",
        ]
    if status != "running":
        return []
    holder = lock_holder(store)
    if holder is not None and holder.alive:
        return [f"  RUNNING (process {holder.pid} on {holder.host}, since {holder.started})"]
    return [
        "  INCOMPLETE (run interrupted; labels here are not a result; rerun with --resume "
        "to continue, or run again without it to start over)"
    ]


def _run_state_lines(state: RunState) -> list[str]:
    """The run record in a few lines; ``--json`` gives all of it (config, statistics)."""
    summary = state.summary or {}
    backend = (state.config or {}).get("backend", {}).get("name")
    facts = {
        "status": state.status,
        "source": state.source,
        "version": state.version,
        "backend": backend,
        "started": state.started,
        "finished": state.finished,
        "tile grid": None if state.grid is None else (
            f"{len(state.grid.tiles)} tiles, cores {_shape(state.grid.tile_px)} px, "
            f"halo {state.grid.halo_px} px"
        ),
        "cells": summary.get("n_cells"),
        "nuclei": summary.get("n_nuclei"),
        "tiles": summary.get("n_tiles"),
        "non-finite px": summary.get("nonfinite_px") or None,
    }
    lines = [f"  {key}: {value}" for key, value in facts.items() if value is not None]
    timings = summary.get("timings_s")
    if timings:
        lines.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if summary.get("qc"):
        from tiled_seg.quality.qc import headline

        lines += [f"  qc: {line}" for line in headline(summary["qc"])]
    return lines


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape)


def describe(store: str | Path) -> StoreInfo:
    """Describe the OME-Zarr image store ``store``.

    Parameters
    ----------
    store : str or Path
        Path or URL of an OME-NGFF image store.

    Returns
    -------
    StoreInfo

    Raises
    ------
    InputNotFoundError, NotNGFFError, AxesError, ChannelError, PixelSizeError
    """
    try:
        slide = open_slide(store)
    except NotNGFFError:
        # A separate output store (``run --output``) holds labels and tables, no image.
        group = open_group(store)
        if RunState.read(str(store)) is None:
            raise
        _, version = ome_attrs(group)
        return _info(str(store), group, version, None)
    return _info(str(store), open_group(slide.path), slide.ngff_version, slide)


def _label_info(image: zarr.Group, name: str) -> LabelInfo:
    try:
        group = image[f"labels/{name}"]
        attrs, _ = ome_attrs(group)
        arrays = [group[d["path"]] for d in attrs["multiscales"][0]["datasets"]]
    except (KeyError, IndexError):
        # Metadata not yet written: a run was interrupted while writing it.
        return LabelInfo(name=name, dtype="incomplete", levels=())
    return LabelInfo(
        name=name,
        dtype=str(arrays[0].dtype),
        levels=tuple(tuple(int(n) for n in a.shape) for a in arrays),
    )


def _info(store: str, image: zarr.Group, version: str, slide: Slide | None) -> StoreInfo:
    path = store if slide is None else slide.path
    run_state = RunState.read(store) or RunState.read(path)
    tiles_recorded = None
    if run_state is not None and run_state.unfinished:
        tiles_recorded = count_records(scratch_path(store))
    return StoreInfo(
        path=path,
        shape=() if slide is None else tuple(int(n) for n in slide.data.shape),
        dtype="" if slide is None else str(slide.data.dtype),
        channel_names=() if slide is None else slide.channel_names,
        pixel_size_um=None if slide is None else slide.pixel_size_um,
        ngff_version=version,
        levels=() if slide is None else tuple(tuple(int(n) for n in lv.shape) for lv in slide.levels),
        labels=tuple(_label_info(image, name) for name in list_labels(path)),
        tables=_tables(image, path),
        run_state=run_state,
        tiles_recorded=tiles_recorded,
        chunk_yx=() if slide is None else tuple(int(n) for n in slide.chunk_yx),
    )


def _tables(image: zarr.Group, path: str) -> tuple[str, ...]:
    """Names under ``tables/``: zarr members, or files on disk (e.g. Parquet)."""
    names: set[str] = set()
    if "tables" in image and isinstance(image["tables"], zarr.Group):
        names.update(list_tables(path))
    folder = Path(path) / "tables"
    if "://" not in path and folder.is_dir():
        names.update(
            p.name for p in folder.iterdir()
            if p.name not in _ZARR_METADATA and not p.name.startswith(".")
        )
    return tuple(sorted(names))
