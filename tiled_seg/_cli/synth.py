"""``tiled-seg synth``: write a synthetic IMC-like slide with ground truth."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg.tiling import DEFAULT_CHUNK_PX


@main.command("synth")
@click.argument("out", type=click.Path(path_type=str))
@click.option("--size", nargs=2, type=int, default=(1024, 1024), show_default=True,
              metavar="H W", help="Slide height and width (px).")
@click.option("--channels", "n_channels", type=int, default=12, show_default=True,
              help="Number of channels (>= 3).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--pixel-size-um", type=float, default=1.0, show_default=True,
              help="Pixel size (um/px); cell sizes in px scale with it.")
@click.option("--density", type=float, default=1.0, show_default=True,
              help="Multiplier of the cell density (1: typical tissue).")
@click.option("--spillover", type=float, default=0.0, show_default=True,
              help="Fraction of a touching neighbour's signal in each membrane pixel.")
@click.option("--ngff-version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True)
@click.option("--chunk-px", type=int, default=DEFAULT_CHUNK_PX, show_default=True, help="Chunk side (px).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@catch_errors
def synth_cmd(
    out: str, size: tuple[int, int], n_channels: int, seed: int, pixel_size_um: float,
    density: float, spillover: float, ngff_version: str, chunk_px: int, overwrite: bool,
) -> None:
    """Write a synthetic slide to OUT (OME-Zarr) with labels gt_cells and gt_nuclei."""
    from tiled_seg.synth import make_slide

    info = make_slide(
        out, size=size, n_channels=n_channels, seed=seed, pixel_size_um=pixel_size_um,
        density=density, spillover=spillover, chunk_px=chunk_px,
        ngff_version="0.4" if ngff_version == "0.4" else "0.5", overwrite=overwrite,
    )
    click.echo(
        f"{info.path}: {info.shape[1]}x{info.shape[2]} px, {info.shape[0]} channels "
        f"({', '.join(info.channel_names)}), {info.n_cells} cells"
    )
