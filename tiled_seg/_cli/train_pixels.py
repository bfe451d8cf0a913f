"""``tiled-seg train-pixels``: train the built-in pixel classifier from sparse annotations."""

from __future__ import annotations

import click

from tiled_seg._cli import catch_errors, main
from tiled_seg._cli._options import split_names


@main.command("train-pixels")
@click.argument("slide")
@click.option("--annotations", required=True, type=click.Path(),
              help="Label image on the slide's grid (TIFF or STORE/labels/NAME): 0 unannotated, "
              "1 nucleus, 2 cytoplasm, 3 background.")
@click.option("--output", required=True, type=click.Path(), help="Classifier file to write (.npz).")
@click.option("--config", "config_path", type=click.Path(),
              help="Run configuration (YAML): panel, normalisation, pixel size, tile size.")
@click.option("--nuclear", help="Comma-separated nuclear channels (the panel's nuclear input).")
@click.option("--membrane", help="Comma-separated membrane channels; '' for none.")
@click.option("--pixel-size-um", type=click.FloatRange(min=0, min_open=True),
              help="Pixel size in um, when the slide does not state it.")
@click.option("--sigmas", help="Comma-separated feature scales in px "
              "[default: ilastik's 0.3,0.7,1,1.6,3.5,5,10].")
@click.option("--trees", type=click.IntRange(min=1), default=100, show_default=True,
              help="Trees of the random forest.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random state of the forest.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any config key, dotted, with a YAML value (repeatable).")
@catch_errors
def train_pixels_cmd(slide, annotations, output, config_path, nuclear, membrane, pixel_size_um,
                     sigmas, trees, seed, settings) -> None:
    """Train a random forest on ilastik's features of SLIDE's panel inputs at the ANNOTATIONS.

    Use the classifier with `--backend probabilities --model OUTPUT` (the
    backend option classifier); runs must use the same panel and normalisation.
    """
    from tiled_seg._cli.run import build_config
    from tiled_seg.errors import ConfigError
    from tiled_seg.segment.pixels import ILASTIK_SIGMAS, train_pixels

    config = build_config(config_path, settings=settings, **{
        "pixel_size_um": pixel_size_um,
        "panel.nuclear": split_names(nuclear),
        "panel.membrane": split_names(membrane),
    })
    scales = ILASTIK_SIGMAS
    if sigmas is not None:
        try:
            scales = tuple(float(s) for s in split_names(sigmas) or ())
        except ValueError:
            scales = ()
        if not scales or min(scales) <= 0:
            raise ConfigError(f"--sigmas {sigmas!r} must be positive px, comma-separated (e.g. 0.7,1.6,3.5).")
    result = train_pixels(slide, annotations, output, config=config, sigmas=scales,
                          n_estimators=trees, random_state=seed)
    counts = ", ".join(f"{name} {n}" for name, n in result.pixels.items())
    click.echo(f"annotated px: {counts}")
    click.echo(f"features: {result.n_features}, halo needed: {result.reach_px} px")
    click.echo(f"wrote {result.path}")
