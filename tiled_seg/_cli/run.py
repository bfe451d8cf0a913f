"""``tiled-seg run``: segment a slide tile by tile and write stitched labels."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg._cli._options import HaloUm, split_names

if TYPE_CHECKING:
    from tiled_seg.config import RunConfig
    from tiled_seg.pipeline import RunResult

#: Names backends give the option that locates their model, in the order tried.
_MODEL_OPTIONS = ("model", "model_path", "pretrained_model")


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
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def _model_option(backend: str) -> str:
    """The option of ``backend`` that names its model file or folder."""
    from tiled_seg.errors import ConfigError
    from tiled_seg.segment.backends import get_segmenter_class

    fields = get_segmenter_class(backend).Options.model_fields
    for name in _MODEL_OPTIONS:
        if name in fields:
            return name
    raise ConfigError(f"backend {backend!r} takes no model; drop --model.")


def build_config(
    config_path: str | None, *, backend: str | None = None, model: str | None = None,
    settings: tuple[str, ...] = (), **overrides: Any,
) -> RunConfig:
    """The run configuration: the YAML file, then the flags, then ``--set KEY=VALUE``.

    Switching the backend drops the file's options of the other backend
    (with a note on stderr): they belong to that backend.
    """
    from tiled_seg.config import load_config, parse_setting

    parsed = dict(parse_setting(text) for text in settings)
    backend = parsed.pop("backend.name", backend)
    config, dropped = load_config(config_path).with_backend(backend)
    if dropped:
        click.echo(
            f"note: not using the configuration's backend options ({', '.join(dropped)}): they "
            f"are for another backend than {config.backend.name}; set its own with --set "
            "backend.options.KEY=VALUE.", err=True,
        )
    if model is not None:
        overrides[f"backend.options.{_model_option(config.backend.name)}"] = model
    # --set comes last, so it wins over a flag that sets the same key.
    return config.with_overrides(**{**overrides, **parsed})


def _write_report(result: RunResult, config, out: str | None) -> str:
    """The run's HTML QC page, with the thresholds its ``qc`` section used."""
    from tiled_seg.report import write_report

    thresholds = result.qc.get("coexpression", {}).get("thresholds")
    page = write_report(result.store, out, table=config.outputs.table, labels=config.outputs.cells,
                        pairs=config.qc.exclusive_pairs, require_pairs=False,
                        thresholds=thresholds, overwrite=True)
    return str(page.html)


@main.command("run")
@click.argument("slides", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(), help="Run configuration (YAML).")
@click.option("--output", help="Separate output store, or with several slides a folder of stores "
              "(default: each slide's own store). A path or a URL (s3://...).")
@click.option("--tile-px", "tile_px", type=click.IntRange(min=1),
              help="Tile core size in px (a multiple of the chunk; `tiled-seg info` shows it).")
@click.option("--tile-size", "tile_px", type=click.IntRange(min=1), hidden=True)
@click.option("--halo-um", "halo_um", type=HaloUm(),
              help="Halo in um, or 'auto' (the backend's largest cell diameter).")
@click.option("--halo", "halo_um", type=HaloUm(), hidden=True)
@click.option("--backend", help="Segmentation backend (default from the config: watershed); "
              "the config's options of another backend are not used.")
@click.option("--model", type=click.Path(), help="Model file or folder of the backend "
              "(its option model, model_path or pretrained_model).")
@click.option("--compartment", type=click.Choice(["whole-cell", "nuclear", "both"]),
              help="Segment whole cells, nuclei only, or both.")
@click.option("--nuclear", help="Comma-separated nuclear channels (the panel's nuclear input).")
@click.option("--membrane", help="Comma-separated membrane channels; '' for none.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any config key, dotted, with a YAML value (repeatable), e.g. "
              "--set tiling.min_overlap=0.4 --set backend.options.threshold=0.3.")
@click.option("--pixel-size-um", type=click.FloatRange(min=0, min_open=True),
              help="Pixel size in um, when the slide does not state it.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local worker processes (default: one per core or GPU).")
@click.option("--cluster", "cluster",
              help="local, local-cuda, slurm, kubernetes, or a scheduler address "
              "(default from the config's cluster section: local).")
@click.option("--scheduler", help="Address of a running dask scheduler (same as --cluster ADDRESS).")
@click.option("--overwrite", is_flag=True, help="Replace existing labels and tables.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted or failed run of the same slide and configuration.")
@click.option("--h5ad", type=click.Path(), help="Also write the cell table as an .h5ad file.")
@click.option("--summary", type=click.Path(), help="Write a JSON run summary here.")
@click.option("--report", "report", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="Write the HTML QC report at the end [default PATH: STORE.report/index.html; "
              "with several slides, each store's default].")
@catch_errors
def run_command(slides, config_path, output, tile_px, halo_um, backend, model, compartment,
                nuclear, membrane, settings, pixel_size_um, workers, cluster, scheduler,
                overwrite, resume, h5ad, summary, report) -> None:
    """Segment SLIDES (OME-Zarr images: paths, URLs or quoted globs) into labels/cells and labels/nuclei.

    Everything is checked before the cluster starts: the slide, its pixel
    size, the panel, the backend, its options and model, and the output.
    Several slides run in one cluster session; a failed slide is reported and
    the others go on (exit code 1 when any failed).
    """
    from tiled_seg.errors import ConfigError

    config = build_config(config_path, backend=backend, model=model, settings=settings, **{
        "tiling.tile_px": tile_px,
        "tiling.halo_um": halo_um,
        "pixel_size_um": pixel_size_um,
        "compartment": compartment,
        "panel.nuclear": split_names(nuclear),
        "panel.membrane": split_names(membrane),
    })
    single = len(slides) == 1 and not any(c in slides[0] for c in "*?[")
    if h5ad and not single:
        raise ConfigError("--h5ad writes one file: give one slide, or use "
                          "`tiled-seg measure STORE --h5ad FILE` per output store.")
    # Every mistake found here costs seconds; after the cluster starts it costs its start-up,
    # so neither the cluster nor the batch machinery is imported before.
    from tiled_seg.pipeline import check_run, configured_backend

    if single:
        check_run(slides[0], config, output=output, overwrite=overwrite, resume=resume, h5ad=h5ad)
    else:
        configured_backend(config).check_model()

    from tiled_seg._cli._progress import tile_progress
    from tiled_seg._cli._quiet import workers_ignore_interrupts
    from tiled_seg.cluster import connect, dashboard_link
    from tiled_seg.pipeline import run
    from tiled_seg.pipeline.batch import expand_slides, run_batch

    paths = expand_slides(slides)
    with contextlib.ExitStack() as stack:
        with workers_ignore_interrupts():
            client = stack.enter_context(
                connect(cluster or scheduler, workers=workers, config=config.cluster))
        link = dashboard_link(client)
        if link:
            click.echo(f"dashboard: {link}", err=True)
        progress = stack.enter_context(tile_progress())
        if single:
            result = run(paths[0], config, output=output, client=client, overwrite=overwrite,
                         progress=progress, resume=resume, h5ad=h5ad)
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
