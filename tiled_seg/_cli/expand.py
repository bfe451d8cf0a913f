"""``tiled-seg expand``: grow nuclei into cells by a radius in um."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main


@main.command("expand")
@click.argument("store", type=click.Path())
@click.option("--radius-um", required=True, type=float, help="Expansion radius (um).")
@click.option("--source", default="nuclei", show_default=True, help="Label image to expand.")
@click.option("--target", default="cells_expanded", show_default=True, help="Label image to write.")
@click.option("--pixel-size-um", default=None, type=float, help="Override the store's pixel size (um).")
@click.option("--overwrite", is_flag=True, help="Replace an existing target.")
@catch_errors
def expand_cmd(
    store: str, radius_um: float, source: str, target: str,
    pixel_size_um: float | None, overwrite: bool,
) -> None:
    """Expand STORE's nuclei by --radius-um without overlap into labels/TARGET."""
    from tiled_seg.segment.expand import expand_store

    result = expand_store(
        store, source=source, target=target, radius_um=radius_um,
        pixel_size_um=pixel_size_um, overwrite=overwrite,
    )
    click.echo(f"expanded by {result.distance_px:.2f} px -> {result.path}")
