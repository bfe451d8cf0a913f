"""The built-in example: synthesize a slide, segment it, score it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distributed import Client

from tiled_seg.config import RunConfig
from tiled_seg.io.ngff import read_labels
from tiled_seg.pipeline import Progress, RunResult, run
from tiled_seg.quality.evaluate import MatchResult, match_labels
from tiled_seg.synth import make_slide

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """The demo's run and its whole-cell accuracy against ground truth."""

    slide: str
    run: RunResult
    cells: MatchResult


def run_demo(
    out_dir: str | Path = "demo_output",
    *,
    size_px: int = 2048,
    seed: int = 0,
    tile_px: int = 512,
    client: Client | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Make a synthetic slide in ``out_dir``, run the pipeline, score the cells.

    Parameters
    ----------
    out_dir : str or Path
        Folder for ``demo.ome.zarr`` (replaced if present).
    size_px : int
        Side of the square slide in px (1 um/px).
    seed : int
        Seed of the synthetic slide.
    tile_px : int
        Tile core size in px.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slide = make_slide(out_dir / "demo.ome.zarr", size=(size_px, size_px), seed=seed, overwrite=True)
    config = RunConfig().with_overrides(**{"tiling.tile_px": tile_px})
    result = run(slide.path, config, client=client, overwrite=True, progress=progress)
    score = match_labels(
        read_labels(result.store, config.outputs.cells).compute(),
        read_labels(result.store, "gt_cells").compute(),
    )
    return DemoResult(slide=str(slide.path), run=result, cells=score)
