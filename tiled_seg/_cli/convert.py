"""``tiled-seg convert``: TIFF / OME-TIFF / MIBItiff / IMC to OME-Zarr."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg.tiling import DEFAULT_CHUNK_PX


@main.command("convert")
@click.argument("input_path", type=click.Path(path_type=str))
@click.argument("output_path", type=click.Path(path_type=str))
@click.option("--pixel-size-um", type=float, default=None,
              help="Pixel size in um; overrides the file's metadata.")
@click.option("--channel-names", default=None,
              help="Comma-separated channel names, one per channel; overrides the file's.")
@click.option("--chunk-px", type=int, default=DEFAULT_CHUNK_PX, show_default=True,
              help="Zarr chunk side in y and x (px).")
@click.option("--ngff-version", type=click.Choice(["0.5", "0.4"]), default="0.5",
              show_default=True, help="OME-NGFF version to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT_PATH if it exists.")
@click.option("--probabilities", is_flag=True,
              help="The TIFF is an ilastik/steinbock probability export: write float32 0-1 "
                   "(channels nucleus, cytoplasm, background). Implied for .h5/.hdf5.")
@catch_errors
def convert_cmd(
    input_path: str,
    output_path: str,
    pixel_size_um: float | None,
    channel_names: str | None,
    chunk_px: int,
    ngff_version: str,
    overwrite: bool,
    probabilities: bool,
) -> None:
    """Convert INPUT_PATH (.tif/.tiff/.ome.tiff, MIBItiff, IMC .txt/.mcd, ilastik .h5) to OME-Zarr.

    A .mcd file gives OUTPUT_PATH/<mcd stem>_<acquisition id>.ome.zarr, one
    store per acquisition; every other input gives the store OUTPUT_PATH.
    """
    from tiled_seg.io.convert import convert

    for store in convert(
        input_path,
        output_path,
        pixel_size_um=pixel_size_um,
        channel_names=channel_names,
        chunk_px=chunk_px,
        ngff_version=ngff_version,  # type: ignore[arg-type]
        overwrite=overwrite,
        probabilities=probabilities,
    ):
        click.echo(store)
