"""``tiled-seg measure``: single-cell tables from existing labels."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main


@main.command("measure")
@click.argument("store", type=click.Path())
@click.option("--labels", default="cells", show_default=True, help="Cell label image to measure.")
@click.option(
    "--nuclei", default="nuclei", show_default=True,
    help="Nucleus label image for compartment means (skipped when absent); '' to skip.",
)
@click.option("--channels", default=None, help="Comma-separated channel names (default: all).")
@click.option("--table", "table_name", default="cell_table", show_default=True,
              help="Name of the table under tables/.")
@click.option("--table-name", "table_name", hidden=True)
@click.option("--distance-um", default=20.0, show_default=True, type=float,
              help="Largest centroid (or border, with --neighbours borders) distance (um) "
                   "of the neighbour graph.")
@click.option("--neighbours", type=click.Choice(["centroids", "borders"]), default="centroids", show_default=True,
              help="Distance graph: centroid distance, or border distance (closest pixels).")
@click.option("--morphology", type=click.Choice(["default", "full"]), default="default", show_default=True,
              help="Shape columns: default (vectorised) or full (adds convex-hull features; slower).")
@click.option("--pixel-size-um", default=None, type=float, help="Override the store's pixel size (um).")
@click.option("--h5ad", "h5ad", default=None, type=click.Path(), help="Also write an .h5ad file.")
@click.option("--steinbock", "steinbock_dir", default=None, type=click.Path(),
              help="Also write steinbock CSVs into this folder.")
@click.option("--overwrite", is_flag=True, help="Replace existing tables.")
@catch_errors
def measure_cmd(
    store: str,
    labels: str,
    nuclei: str,
    channels: str | None,
    table_name: str,
    distance_um: float,
    neighbours: str,
    morphology: str,
    pixel_size_um: float | None,
    h5ad: str | None,
    steinbock_dir: str | None,
    overwrite: bool,
) -> None:
    """Measure every cell of STORE's labels: intensities, morphology, neighbours."""
    from tiled_seg.measure import measure_store

    result = measure_store(
        store,
        labels=labels,
        nuclei=nuclei or None,
        channels=[c.strip() for c in channels.split(",")] if channels else None,
        pixel_size_um=pixel_size_um,
        table_name=table_name,
        distance_um=distance_um,
        neighbours=neighbours,
        morphology=morphology,
        h5ad=h5ad,
        steinbock_dir=steinbock_dir,
        overwrite=overwrite,
    )
    click.echo(f"measured {result.n_cells} cells; table {result.table_shape[0]} x {result.table_shape[1]}")
    for kind, path in result.paths.items():
        click.echo(f"  {kind}: {path}")
