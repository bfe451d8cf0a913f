"""The output store of a run: preparing it, the run status record, resume checks, scratch.

The store's ``tiled_seg`` attribute says whether a run is ``running``,
``failed`` or ``complete``. It is set to ``running`` before any label is
touched, to ``failed`` (with the error) when a stage raises, and to
``complete`` only after everything is written, so an unfinished run never
looks finished and ``--resume`` can tell what it may continue. Labels of a
failed or interrupted run are not a result: a plain retry may replace them
without ``--overwrite``.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
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
from tiled_seg.io._fs import exists, is_url, remove_tree, same_location
from tiled_seg.io.ngff import Slide, link_image, list_labels
from tiled_seg.normalize import SlideStats
from tiled_seg.tiling import TileGrid

#: Run states whose labels are not a result: a failed run, or one interrupted
#: (``running`` while no live run holds the store's lock).
UNFINISHED = ("failed", "running")


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
    """The ``tiled_seg`` record of ``store``; empty when it has none or is no zarr group."""
    if not exists(store):
        return {}
    try:
        return dict(zarr.open_group(store, mode="r").attrs.get("tiled_seg", {}))
    except (OSError, ValueError):  # a folder or file that is no zarr group: no run record
        return {}


def _resumable(store: str, input_key: str) -> bool:
    """Whether ``store`` holds an unfinished run of these inputs and configuration."""
    state = _run_state(store)
    if state.get("status") == "complete":
        raise OutputExistsError(
            f"{store} holds a complete run; there is nothing to resume. Run without "
            "--resume, with --overwrite, to segment it again."
        )
    if state.get("status") not in UNFINISHED:
        return False
    if state.get("input_key") != input_key:
        raise ResumeError(
            f"the unfinished run in {store} used a different input or configuration; "
            "resume with the original configuration, or rerun without --resume to start over."
        )
    return True


def output_store(slide: Slide, output: str | None) -> str:
    """The store a run writes: ``output``, or the slide's own store."""
    if output is None or same_location(output, slide.path):
        return slide.path
    return output


def _check_writable(store: str) -> None:
    """Raise :class:`OutputNotWritableError` when ``store`` cannot be created or written.

    Checks the store, or the nearest folder above it that exists; object
    stores are not checked (only a write can tell).
    """
    if is_url(store):
        return
    path = Path(store).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if path != Path(store).absolute() and not path.is_dir():
        raise OutputNotWritableError(
            f"cannot write the output {store} ({path} is a file, not a folder); choose a "
            "writable --output. The input was not modified."
        )
    if not os.access(path, os.W_OK):
        raise OutputNotWritableError(
            f"cannot write the output {store} ({path} is not writable); choose a writable "
            "--output. The input was not modified."
        )


def check_output(
    slide: Slide, output: str | None, names: list[str], *, overwrite: bool,
    resume: bool = False, input_key: str = "",
) -> str:
    """Raise now whatever preparing the output would raise; writes nothing.

    Parameters and errors as :func:`start_output`. Returns the output store.
    """
    store = output_store(slide, output)
    state = _run_state(store)
    retry = state.get("status") in UNFINISHED
    if not (resume and _resumable(store, input_key)):
        if store != slide.path:
            if exists(store) and not overwrite and not retry:
                raise OutputExistsError(
                    f"{store} exists; choose another --output or pass --overwrite."
                )
        else:
            # Labels the unfinished run was writing are partial: nothing complete is lost.
            partial = set(state.get("writes", [])) if retry else set()
            present = [n for n in names if n in list_labels(store) and n not in partial]
            if present and not overwrite:
                raise OutputExistsError(
                    f"{store} already has labels {present}; pass --overwrite to replace them "
                    "or --output to write elsewhere."
                )
    _check_writable(store)
    return store


def _prepare_output(
    slide: Slide, output: str | None, names: list[str], overwrite: bool,
    resume: bool = False, input_key: str = "",
) -> str:
    store = check_output(slide, output, names, overwrite=overwrite, resume=resume,
                         input_key=input_key)
    if resume and _resumable(store, input_key):
        return store
    if store != slide.path:
        remove_tree(store)
        version = slide.ngff_version
        group = zarr.open_group(store, mode="w", zarr_format=3 if version == "0.5" else 2)
        group.attrs["tiled_seg"] = {"source": slide.path}
        # A valid image store: its labels' parent must be the multiscale image.
        link_image(slide.path, store)
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
            "writes": list(names),
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


def mark_failed(store: str, error: BaseException) -> None:
    """Record the run in ``store`` as failed with ``error``; a plain retry may replace it."""
    set_status(store, {
        "status": "failed",
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "error": f"{type(error).__name__}: {error}",
    })


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
