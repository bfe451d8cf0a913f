"""``tiled-seg demo``: synthesize a slide, segment it, print accuracy."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main


def napari_hint(store: str) -> str:
    """How to look at ``store`` in napari, from inside the project's virtual environment."""
    return (
        "open it in napari (inside the activated .venv): "
        'python -m pip install "napari[all]" napari-ome-zarr && '
        f"napari --plugin napari-ome-zarr {store}"
    )


@main.command("demo")
@click.option("--output", "output", default="demo_output", show_default=True, type=click.Path(),
              help="Folder for the synthetic slide and its results (replaced).")
@click.option("--out-dir", "output", type=click.Path(), hidden=True)
@click.option("--size", "size_px", default=2048, show_default=True, type=click.IntRange(min=64),
              help="Side of the square synthetic slide in px (1 um/px).")
@click.option("--tile-px", "tile_px", default=512, show_default=True, type=click.IntRange(min=1),
              help="Tile core size in px.")
@click.option("--tile-size", "tile_px", type=click.IntRange(min=1), hidden=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", type=click.IntRange(min=1),
              help="Local worker processes (default: one per core).")
@catch_errors
def demo_command(output, size_px, tile_px, seed, workers) -> None:
    """Make a synthetic slide with ground truth, segment it tile by tile, score it."""
    import contextlib

    from tiled_seg._cli._progress import tile_progress
    from tiled_seg._cli._quiet import workers_ignore_interrupts
    from tiled_seg._cli.run import format_result
    from tiled_seg.cluster import connect
    from tiled_seg.demo import run_demo

    click.echo(f"synthesizing a {size_px} x {size_px} px slide in {output}/ ...")
    with contextlib.ExitStack() as stack:
        with workers_ignore_interrupts():
            client = stack.enter_context(connect(workers=workers))
        progress = stack.enter_context(tile_progress())
        result = run_demo(output, size_px=size_px, seed=seed, tile_px=tile_px,
                          client=client, progress=progress)
    score = result.cells
    click.echo(format_result(result.run))
    click.echo(
        f"whole-cell accuracy against the ground truth (IoU 0.5): F1 {score.f1:.3f}, "
        f"precision {score.precision:.3f}, recall {score.recall:.3f} "
        f"({score.n_pred} cells found, {score.n_true} true; {score.merges} merges, "
        f"{score.splits} splits)"
    )
    click.echo(napari_hint(result.slide))
