"""The output store of a run: preparing it, its run state, resume checks.

The store's run state (:class:`~tiled_seg.pipeline.state.RunState`) says whether a run is ``running``,
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
from tiled_seg.config import RunConfig, redact_secrets
from tiled_seg.errors import OutputExistsError, OutputNotWritableError, ResumeError, TiledSegError
from tiled_seg.io.fs import exists, is_url, remove_tree, same_location
from tiled_seg.io.ngff import Slide, link_image, list_labels
from tiled_seg.pipeline.state import RunState


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def update_state(store: str, **changes: Any) -> None:
    """Set fields of the run state of ``store`` (see :class:`RunState`)."""
    (RunState.read(store) or RunState()).replace(**changes).write(store)


def _resumable(store: str, input_key: str) -> bool:
    """Whether ``store`` holds an unfinished run of these inputs and configuration."""
    state = RunState.read(store) or RunState()
    if state.status == "complete":
        raise OutputExistsError(
            f"{store} holds a complete run; there is nothing to resume. Run without "
            "--resume, with --overwrite, to segment it again."
        )
    if not state.unfinished:
        return False
    if state.input_key != input_key:
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
    state = RunState.read(store) or RunState()
    retry = state.unfinished
    if not (resume and _resumable(store, input_key)):
        if store != slide.path:
            if exists(store) and not overwrite and not retry:
                raise OutputExistsError(
                    f"{store} exists; choose another --output or pass --overwrite."
                )
        else:
            # Labels the unfinished run was writing are partial: nothing complete is lost.
            partial = set(state.writes) if retry else set()
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
        zarr.open_group(store, mode="w", zarr_format=3 if version == "0.5" else 2)
        RunState(source=slide.path).write(store)
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
        # Replaces the record, so a rerun never shows the previous run's summary.
        previous = RunState.read(store) or RunState()
        RunState(
            source=previous.source, status="running", version=__version__, started=_now(),
            config=redact_secrets(config.model_dump(mode="json")), input_key=input_key,
            writes=tuple(names),
        ).write(store)
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
    update_state(store, status="failed", finished=_now(), error=f"{type(error).__name__}: {error}")


def mark_complete(store: str, summary: dict[str, Any]) -> None:
    """Record the run in ``store`` as complete, with its summary."""
    update_state(store, status="complete", finished=_now(), summary=summary)
