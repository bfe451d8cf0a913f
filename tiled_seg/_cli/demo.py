"""``tiled-seg demo``: synthesize a slide, segment it, print accuracy."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg._cli._progress import tile_progress
from tiled_seg._cli.run import format_result
from tiled_seg.cluster import connect
from tiled_seg.demo import run_demo


@main.command("demo")
@click.option("--out-dir", default="demo_output", show_default=True, type=click.Path(),
              help="Folder for the synthetic slide and its results (replaced).")
@click.option("--size", "size_px", default=2048, show_default=True, type=int,
              help="Side of the square synthetic slide in px (1 um/px).")
@click.option("--tile-size", "tile_px", default=512, show_default=True, type=int,
              help="Tile core size in px.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", type=int, help="Local worker processes (default: one per core).")
@catch_errors
def demo_command(out_dir, size_px, tile_px, seed, workers) -> None:
    """Make a synthetic slide with ground truth, segment it tile by tile, score it."""
    click.echo(f"synthesizing a {size_px} x {size_px} px slide in {out_dir}/ ...")
    with connect(workers=workers) as client, tile_progress() as progress:
        result = run_demo(out_dir, size_px=size_px, seed=seed, tile_px=tile_px,
                          client=client, progress=progress)
    score = result.cells
    click.echo(format_result(result.run))
    click.echo(
        f"whole-cell accuracy against the ground truth (IoU 0.5): F1 {score.f1:.3f}, "
        f"precision {score.precision:.3f}, recall {score.recall:.3f} "
        f"({score.n_pred} cells found, {score.n_true} true; {score.merges} merges, "
        f"{score.splits} splits)"
    )
    click.echo(
        f"open it in napari:  pip install napari napari-ome-zarr && "
        f"napari --plugin napari-ome-zarr {result.slide}"
    )
