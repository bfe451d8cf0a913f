"""The output store of a run: preparing it, the run status record, resume checks, scratch.

The store's ``tiled_seg`` attribute says whether a run is ``running`` or
``complete``. It is set to ``running`` before any label is touched and to
``complete`` only after everything is written, so an interrupted run never
looks finished and ``--resume`` can tell what it may continue.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import zarr

from tiled_seg import __version__
from tiled_seg._redact import redact_secrets
from tiled_seg._manifest import (
    TileResult,
    check_scratch,
    create_scratch,
    fingerprint,
    read_records,
    scratch_path,
)
from tiled_seg.config import RunConfig
from tiled_seg.errors import OutputExistsError, OutputNotWritableError, ResumeError, TiledSegError
from tiled_seg.io._fs import exists, remove_tree, same_location
from tiled_seg.io.ngff import Slide, link_image, list_labels
from tiled_seg.normalize import SlideStats
from tiled_seg.tiling import TileGrid


def set_status(store: str, status: dict[str, Any]) -> None:
    """Merge ``status`` into the ``tiled_seg`` record of ``store``."""
    group = zarr.open_group(store, mode="a")
    group.attrs["tiled_seg"] = {**group.attrs.get("tiled_seg", {}), **status}


def _start_status(store: str, status: dict[str, Any]) -> None:
    """Replace the run record, so a rerun never shows the previous run's summary."""
    group = zarr.open_group(store, mode="a")
    previous = group.attrs.get("tiled_seg", {})
    kept = {"source": previous["source"]} if "source" in previous else {}
    group.attrs["tiled_seg"] = {**kept, **status}


def _run_state(store: str) -> dict[str, Any]:
    """The ``tiled_seg`` record of ``store``; empty when it has none or does not exist."""
    if not exists(store):
        return {}
    return dict(zarr.open_group(store, mode="r").attrs.get("tiled_seg", {}))


def _resumable(store: str, input_key: str) -> bool:
    """Whether ``store`` holds an interrupted run of these inputs and configuration."""
    state = _run_state(store)
    if state.get("status") == "complete":
        raise OutputExistsError(
            f"{store} holds a complete run; there is nothing to resume. Run without "
            "--resume, with --overwrite, to segment it again."
        )
    if state.get("status") != "running":
        return False
    if state.get("input_key") != input_key:
        raise ResumeError(
            f"the interrupted run in {store} used a different input or configuration; "
            "resume with the original configuration, or rerun without --resume and with "
            "--overwrite to start over."
        )
    return True


def _prepare_output(
    slide: Slide, output: str | None, names: list[str], overwrite: bool,
    resume: bool = False, input_key: str = "",
) -> str:
    store = output or slide.path
    if output and same_location(output, slide.path):
        store = slide.path
    if resume and _resumable(store, input_key):
        return store
    if store != slide.path:
        if exists(store) and not overwrite:
            raise OutputExistsError(f"{store} exists; choose another --output or pass --overwrite.")
        remove_tree(store)
        version = slide.ngff_version
        group = zarr.open_group(store, mode="w", zarr_format=3 if version == "0.5" else 2)
        group.attrs["tiled_seg"] = {"source": slide.path}
        # A valid image store: its labels' parent must be the multiscale image.
        link_image(slide.path, store)
        return store
    present = [n for n in names if n in list_labels(store)]
    if present and not overwrite:
        raise OutputExistsError(
            f"{store} already has labels {present}; pass --overwrite to replace them "
            "or --output to write elsewhere."
        )
    return store


def start_output(
    slide: Slide, output: str | None, names: list[str], config: RunConfig, *,
    overwrite: bool, resume: bool, input_key: str,
) -> str:
    """Prepare the output store and mark a run of ``input_key`` as running in it.

    Parameters
    ----------
    slide : Slide
        The input; its own store is the output when ``output`` is None.
    output : str, optional
        A separate output store.
    names : list of str
        Label images this run writes; existing ones need ``overwrite``.
    config : RunConfig
        Recorded in the status for provenance.
    overwrite, resume : bool
        As in :func:`tiled_seg.pipeline.run`.
    input_key : str
        Fingerprint of the inputs and configuration; a resume must match it.

    Returns
    -------
    str
        The output store.

    Raises
    ------
    OutputExistsError, ResumeError
        The store holds labels or a run this call may not replace or continue.
    OutputNotWritableError
        The store cannot be written.
    """
    try:
        store = _prepare_output(slide, output, names, overwrite, resume, input_key)
        # Set before any label is touched: an interrupted run never looks complete.
        _start_status(store, {
            "status": "running",
            "version": __version__,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "config": redact_secrets(config.model_dump(mode="json")),
            "input_key": input_key,
        })
    except TiledSegError:
        raise
    except OSError as error:
        target = slide.path if output is None else output
        raise OutputNotWritableError(
            f"cannot write the output {target} ({error.strerror or error}); choose a writable "
            "--output. The input was not modified."
        ) from error
    return store


def mark_complete(store: str, summary: dict[str, Any]) -> None:
    """Record the run in ``store`` as complete, with its summary."""
    set_status(store, {
        "status": "complete",
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "summary": summary,
    })


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
