"""``tiled-seg info``: what an OME-Zarr store holds."""

from __future__ import annotations

import json

import click

from tiled_seg._cli import catch_errors, main


@main.command("info")
@click.argument("store", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@catch_errors
def info_cmd(store: str, as_json: bool) -> None:
    """Describe STORE: image, pyramid, labels, tables and run state."""
    from tiled_seg.pipeline.info import describe

    info = describe(store)
    click.echo(json.dumps(info.to_dict(), indent=2) if as_json else info.format())
