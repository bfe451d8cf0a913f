"""``tiled-seg report``: an HTML quality-control page of a segmented store."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main


@main.command("report")
@click.argument("store")
@click.option("--output", "output", default=None,
              help="HTML file to write [default: STORE.report/index.html].")
@click.option("--out", "output", hidden=True)
@click.option("--table", default="cell_table", show_default=True, help="Cell table under tables/.")
@click.option("--labels", default="cells", show_default=True, help="Label image under labels/.")
@click.option("--pair", "pairs", multiple=True, metavar="A/B",
              help="Mutually exclusive markers, both in the table (repeatable) "
              "[default: the synthetic panel's pairs that the table has].")
@click.option("--overwrite", is_flag=True, help="Replace an existing page.")
@catch_errors
def report_cmd(
    store: str, output: str | None, table: str, labels: str, pairs: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Write a QC page of STORE: overview, seams, sizes, intensities, co-expression, timings."""
    from tiled_seg.errors import ConfigError
    from tiled_seg.report import write_report

    split = [p.split("/") for p in pairs]
    if any(len(p) != 2 for p in split):
        raise ConfigError(f"--pair takes two markers as A/B (e.g. CD3/CD20); got {list(pairs)}.")
    parsed = [(a, b) for a, b in split]
    result = write_report(store, output, table=table, labels=labels, overwrite=overwrite,
                          pairs=parsed or None)
    click.echo(f"wrote {result.html} with {len(result.figures)} figures")
    if result.coexpression is not None:
        click.echo(f"impossible co-expression rate: {result.coexpression.rate:.4f}")
