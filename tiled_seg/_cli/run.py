"""``tiled-seg run``: segment a slide tile by tile and write stitched labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg._cli._progress import tile_progress
from tiled_seg.batch import expand_slides, run_batch
from tiled_seg.cluster import connect, dashboard_link
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
    if result.resumed_tiles:
        lines.append(f"resumed: {result.resumed_tiles} of {result.n_tiles} tiles from the interrupted run")
    if result.nonfinite_px:
        lines.append(
            f"non-finite pixels: {result.nonfinite_px} (NaN/inf, treated as 0) in "
            f"{len(result.nonfinite_tiles)} tiles"
        )
    lines += [f"wrote {path}" for path in [*result.labels.values(), *result.tables.values()]]
    return "\n".join(lines)


def _write_report(result: RunResult, config, out: str | None) -> str:
    """The run's HTML QC page, with the thresholds its ``qc`` section used."""
    from tiled_seg.report import write_report

    thresholds = result.qc.get("coexpression", {}).get("thresholds")
    page = write_report(result.store, out, table=config.outputs.table, labels=config.outputs.cells,
                        pairs=config.qc.exclusive_pairs, thresholds=thresholds, overwrite=True)
    return str(page.html)


@main.command("run")
@click.argument("slides", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(), help="Run configuration (YAML).")
@click.option("--output", help="Separate output store, or with several slides a folder of stores "
              "(default: each slide's own store). A path or a URL (s3://...).")
@click.option("--tile-size", type=int, help="Tile core size in px (a multiple of the chunk).")
@click.option("--halo", help="Halo in um, or 'auto' (the backend's largest cell diameter).")
@click.option("--backend", help="Segmentation backend (default from the config: watershed).")
@click.option("--pixel-size-um", type=float, help="Pixel size in um, when the slide does not state it.")
@click.option("--workers", type=int, help="Local worker processes (default: one per core or GPU).")
@click.option("--cluster", "cluster",
              help="local, local-cuda, slurm, kubernetes, or a scheduler address "
              "(default from the config's cluster section: local).")
@click.option("--scheduler", help="Address of a running dask scheduler (same as --cluster ADDRESS).")
@click.option("--overwrite", is_flag=True, help="Replace existing labels and tables.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run of the same slide and configuration.")
@click.option("--summary", type=click.Path(), help="Write a JSON run summary here.")
@click.option("--report", "report", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="Write the HTML QC report at the end [default PATH: STORE.report/index.html; "
              "with several slides, each store's default].")
@catch_errors
def run_command(slides, config_path, output, tile_size, halo, backend, pixel_size_um,
                workers, cluster, scheduler, overwrite, resume, summary, report) -> None:
    """Segment SLIDES (OME-Zarr images: paths, URLs or quoted globs) into labels/cells and labels/nuclei.

    Several slides run in one cluster session; a failed slide is reported and
    the others go on (exit code 1 when any failed).
    """
    halo_um = None if halo is None else (halo if halo == "auto" else float(halo))
    config = load_config(config_path).with_overrides(**{
        "tiling.tile_px": tile_size,
        "tiling.halo_um": halo_um,
        "backend.name": backend,
        "pixel_size_um": pixel_size_um,
    })
    paths = expand_slides(slides)
    single = len(paths) == 1 and len(slides) == 1 and not any(c in slides[0] for c in "*?[")
    with connect(cluster or scheduler, workers=workers, config=config.cluster) as client:
        link = dashboard_link(client)
        if link:
            click.echo(f"dashboard: {link}", err=True)
        with tile_progress() as progress:
            if single:
                result = run(paths[0], config, output=output, client=client,
                             overwrite=overwrite, progress=progress, resume=resume)
            else:
                batch = run_batch(paths, config, output_dir=output, client=client,
                                  overwrite=overwrite, progress=progress, resume=resume)
    if report is not None:
        done = [result] if single else [o.result for o in batch.outcomes if o.result]
        for finished in done:
            page = _write_report(finished, config, report if single and report else None)
            click.echo(f"report: {page}")
    if single:
        click.echo(format_result(result))
        record = result.to_summary()
    else:
        for outcome in batch.outcomes:
            detail = f"{outcome.result.n_cells} cells" if outcome.result else outcome.error
            click.echo(f"{outcome.status:6s} {outcome.slide}: {detail}")
        record = batch.to_summary()
    if summary:
        Path(summary).write_text(json.dumps(record, indent=2))
        click.echo(f"summary: {summary}")
    if not single and batch.failed:
        raise SystemExit(1)
