"""Run many slides in one cluster session, one failure not stopping the rest.

Slides run in a few threads against one client, so the tiles of one slide
keep the workers busy while another computes its statistics or stitches;
small images then do not leave workers idle between slides.
"""

from __future__ import annotations

import glob
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, Sequence

from distributed import Client

from tiled_seg.config import RunConfig
from tiled_seg.errors import ConfigError, InputNotFoundError
from tiled_seg.io.fs import filesystem, is_url, join
from tiled_seg.pipeline import Progress, RunResult, run

__all__ = ["SlideOutcome", "BatchResult", "expand_slides", "output_for", "run_batch"]

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SlideOutcome:
    """What happened to one slide of a batch."""

    slide: str
    status: Literal["ok", "failed"]
    output: str | None
    error: str | None = None
    result: RunResult | None = field(default=None, repr=False)

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready record: slide, status, error and the run summary when ok."""
        record: dict[str, Any] = {"slide": self.slide, "status": self.status, "error": self.error}
        if self.result is not None:
            record.update(self.result.to_summary())
        return record


@dataclass(frozen=True)
class BatchResult:
    """Outcomes of :func:`run_batch`, in the order of the slides."""

    outcomes: tuple[SlideOutcome, ...]

    @property
    def failed(self) -> tuple[SlideOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready ``{"slides": [...], "n_ok": ..., "n_failed": ...}``."""
        return {
            "slides": [o.to_summary() for o in self.outcomes],
            "n_ok": len(self.outcomes) - len(self.failed),
            "n_failed": len(self.failed),
        }


def _glob(pattern: str) -> list[str]:
    if not is_url(pattern):
        return sorted(glob.glob(pattern))
    fs, inner = filesystem(pattern)
    protocol = pattern.split("://", 1)[0]
    return sorted(f"{protocol}://{path}" for path in fs.glob(inner))


def expand_slides(patterns: Sequence[str]) -> list[str]:
    """Slide paths or URLs from ``patterns``; glob patterns are expanded, duplicates dropped.

    Raises
    ------
    InputNotFoundError
        A pattern matches nothing.
    """
    slides: list[str] = []
    for pattern in map(str, patterns):
        if any(c in pattern for c in _GLOB_CHARS):
            found = _glob(pattern)
            if not found:
                raise InputNotFoundError(
                    f"{pattern!r} matches no slide; check the pattern (quote it so the shell "
                    "does not expand it)."
                )
            slides += found
        else:
            slides.append(pattern)
    return list(dict.fromkeys(s.rstrip("/") for s in slides))


def output_for(slides: Sequence[str], output_dir: str | None) -> dict[str, str | None]:
    """Output store of each slide: ``output_dir/<slide name>``, or None (its own store).

    Raises
    ------
    ConfigError
        Two slides have the same name, so their outputs would collide.
    """
    if output_dir is None:
        return {s: None for s in slides}
    targets = {s: join(output_dir, PurePosixPath(s.rstrip("/")).name) for s in slides}
    names = list(targets.values())
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(
            f"several slides would write to {clashes}; give slides distinct names or run "
            "them without --output (labels go into each slide's store)."
        )
    return dict(targets)


def run_batch(
    slides: Sequence[str],
    config: RunConfig,
    *,
    output_dir: str | None = None,
    client: Client,
    overwrite: bool = False,
    progress: Progress | None = None,
    resume: bool = False,
    concurrent: int = 2,
) -> BatchResult:
    """Segment every slide with one client; a failed slide is recorded, not raised.

    Parameters
    ----------
    slides : sequence of str
        Slide paths or URLs (expand patterns with :func:`expand_slides`).
    config : RunConfig
        One configuration for all slides.
    output_dir : str, optional
        Folder or URL prefix for one output store per slide (named as the
        slide); default writes labels into each slide's store.
    client : distributed.Client
        Shared by all slides.
    overwrite, resume : bool
        As in :func:`tiled_seg.pipeline.run`, for every slide.
    progress : callable, optional
        ``progress(stage, done, total)``; the stage names the slide.
    concurrent : int
        Slides in flight at once (>= 1).

    Returns
    -------
    BatchResult
        One outcome per slide, in the given order.
    """
    if concurrent < 1:
        raise ConfigError(f"concurrent must be >= 1 slide; got {concurrent}.")
    targets = output_for(slides, output_dir)

    def one(slide: str) -> SlideOutcome:
        name = PurePosixPath(slide).name
        report = None if progress is None else (
            lambda stage, done, total: progress(f"{name} {stage}", done, total)
        )
        try:
            result = run(slide, config, output=targets[slide], client=client,
                         overwrite=overwrite, progress=report, resume=resume)
        except Exception as error:  # one slide's failure must not stop the batch
            return SlideOutcome(slide, "failed", targets[slide], f"{type(error).__name__}: {error}")
        return SlideOutcome(slide, "ok", result.store, result=result)

    with ThreadPoolExecutor(max_workers=min(concurrent, max(1, len(slides)))) as pool:
        outcomes = tuple(pool.map(one, slides))
    return BatchResult(outcomes)
