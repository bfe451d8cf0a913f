"""``tiled-seg run``: segment a slide tile by tile and write stitched labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg._cli._progress import tile_progress
from tiled_seg.cluster import connect
from tiled_seg.config import load_config
from tiled_seg.pipeline import RunResult, run


def format_result(result: RunResult) -> str:
    """A short human summary of a finished run."""
    lines = [
        f"cells: {result.n_cells}"
        + (f"   nuclei: {result.n_nuclei}" if result.n_nuclei is not None else ""),
        f"tiles: {result.n_tiles} of {result.tile_px} px, halo {result.halo_px} px",
        "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()),
    ]
    lines += [f"wrote {path}" for path in [*result.labels.values(), *result.tables.values()]]
    return "\n".join(lines)


@main.command("run")
@click.argument("slide", type=click.Path())
@click.option("--config", "config_path", type=click.Path(), help="Run configuration (YAML).")
@click.option("--output", type=click.Path(), help="Separate output store (default: the slide's store).")
@click.option("--tile-size", type=int, help="Tile core size in px (a multiple of the chunk).")
@click.option("--halo", help="Halo in um, or 'auto' (the backend's largest cell diameter).")
@click.option("--backend", help="Segmentation backend (default from the config: watershed).")
@click.option("--pixel-size-um", type=float, help="Pixel size in um, when the slide does not state it.")
@click.option("--workers", type=int, help="Local worker processes (default: one per core).")
@click.option("--scheduler", help="Address of a running dask scheduler instead of a local cluster.")
@click.option("--overwrite", is_flag=True, help="Replace existing labels and tables.")
@click.option("--summary", type=click.Path(), help="Write a JSON run summary here.")
@catch_errors
def run_command(slide, config_path, output, tile_size, halo, backend, pixel_size_um,
                workers, scheduler, overwrite, summary) -> None:
    """Segment SLIDE (an OME-Zarr image) and write labels/cells and labels/nuclei."""
    halo_um = None if halo is None else (halo if halo == "auto" else float(halo))
    config = load_config(config_path).with_overrides(**{
        "tiling.tile_px": tile_size,
        "tiling.halo_um": halo_um,
        "backend.name": backend,
        "pixel_size_um": pixel_size_um,
    })
    with connect(scheduler, workers=workers) as client, tile_progress() as progress:
        result = run(slide, config, output=output, client=client,
                     overwrite=overwrite, progress=progress)
    click.echo(format_result(result))
    if summary:
        Path(summary).write_text(json.dumps(result.to_summary(), indent=2))
        click.echo(f"summary: {summary}")
