"""``tiled-seg evaluate``: object-level F1 of a label image against a reference."""

from __future__ import annotations

import json

import click

from tiled_seg._cli import catch_errors, main


@main.command("evaluate")
@click.argument("pred")
@click.argument("gt")
@click.option("--iou", "iou_threshold", default=0.5, show_default=True, type=float,
              help="IoU a one-to-one pair needs to count as a match.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@catch_errors
def evaluate_cmd(pred: str, gt: str, iou_threshold: float, as_json: bool) -> None:
    """Compare PRED with GT (TIFF files or store.ome.zarr/labels/<name>).

    NGFF labels are read lazily and compared chunk by chunk, so whole slides
    fit in bounded memory.
    """
    from tiled_seg.quality.evaluate import evaluate_paths

    result = evaluate_paths(pred, gt, iou_threshold)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    for key, value in result.to_dict().items():
        click.echo(f"{key:>17}: {value:.4f}" if isinstance(value, float) else f"{key:>17}: {value}")
