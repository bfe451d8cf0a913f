"""``tiled-seg export``: a store's results in other tools' formats."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main


@main.group("export")
def export_group() -> None:
    """Export STORE's image, labels and tables for other tools."""


@export_group.command("spatialdata")
@click.argument("store", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--table", default="cell_table", show_default=True, help="Cell table under tables/.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@catch_errors
def spatialdata_cmd(store: str, out: str, table: str, overwrite: bool) -> None:
    """Write STORE as the SpatialData zarr store OUT (needs tiled-seg[spatialdata])."""
    from tiled_seg.io.export_spatialdata import export_spatialdata

    result = export_spatialdata(store, out, table=table, overwrite=overwrite)
    click.echo(f"wrote {result.path}: image {result.image!r}, labels {list(result.labels)}, "
               f"table {result.table!r} annotating {result.region!r}")
