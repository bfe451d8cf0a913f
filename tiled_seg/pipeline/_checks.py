"""Checks before a run does any work: the slide, the panel, the backend, the output.

Everything here reads metadata only and imports neither the cluster nor the
measurement stack, so a mistake is reported within seconds of the command,
before a cluster starts or anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tiled_seg import __version__
from tiled_seg.config import RunConfig, validation_problems
from tiled_seg.errors import (
    ChannelError,
    ConfigError,
    OutputExistsError,
    PixelSizeError,
    TileLayoutError,
)
from tiled_seg.io.ngff import Slide, open_slide
from tiled_seg.pipeline._lock import check_unlocked
from tiled_seg.pipeline._output import check_output, output_store
from tiled_seg.pipeline.state import fingerprint
from tiled_seg.segment.backends import Segmenter, get_segmenter_class
from tiled_seg.segment.normalize import choose_stats_level
from tiled_seg.tiling import TileGrid, plan_tiles

__all__ = ["Inputs", "Plan", "configured_backend", "halo_px_for", "open_inputs", "plan_run",
           "check_h5ad", "check_run"]

@dataclass(frozen=True)
class Inputs:
    """The opened slide and what the configuration asks of it."""

    slide: Slide
    #: The slide's pixel size (um), given or stated by the slide.
    pixel_size_um: float
    #: Channels read per tile: nuclear then membrane, without repeats.
    channels: tuple[str, ...]
    #: Membrane channels used; none for a nuclear-only run.
    membrane: tuple[str, ...]
    #: ``cells`` or ``nuclei``: what the tiles' ``objects`` scratch holds.
    primary: str
    #: Label image name per kind (``cells``, ``nuclei``).
    out_names: dict[str, str]
    #: Label images this run writes, refused if present without overwrite.
    written_names: list[str]


@dataclass(frozen=True)
class Plan:
    """Tiling and fingerprint of a run, fixed before anything is written."""

    grid: TileGrid
    halo_px: int
    #: Pyramid level the slide statistics are computed on.
    stats_level: int
    #: Fingerprint of the inputs and configuration; a resume must match it.
    input_key: str


def configured_backend(config: RunConfig) -> Segmenter:
    """The configured backend with its options validated; the model is not loaded.

    Raises
    ------
    BackendError
        The backend is unknown or not installed.
    ConfigError
        An option is unknown to this backend or has a wrong value.
    """
    cls = get_segmenter_class(config.backend.name)
    try:
        return cls(config.backend.options)
    except ValidationError as error:
        known = ", ".join(cls.Options.model_fields)
        raise ConfigError(
            f"invalid options of backend {config.backend.name!r}: "
            + validation_problems(error, prefix="backend.options.")
            + f". Options of {config.backend.name}: {known}."
        ) from None


def halo_px_for(config: RunConfig, pixel_size_um: float) -> int:
    """Halo in px: the configured um, or the backend's largest cell diameter."""
    halo_um = config.tiling.halo_um
    if halo_um == "auto":
        halo_um = configured_backend(config).max_cell_diameter_um
    return max(1, math.ceil(float(halo_um) / pixel_size_um))


def _check_panel(slide: Slide, channels: tuple[str, ...]) -> None:
    """Raise one :class:`ChannelError` naming every panel channel the slide lacks."""
    missing = [name for name in channels if name not in slide.channel_names]
    if missing:
        raise ChannelError(
            f"channel{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"{'are' if len(missing) > 1 else 'is'} not in the slide {slide.path}; available "
            f"channels: {', '.join(slide.channel_names)}. Fix the panel in the run "
            "configuration (or --nuclear / --membrane)."
        )


def open_inputs(slide_path: str | Path, config: RunConfig) -> Inputs:
    """Open the slide and check everything a run needs before any work starts.

    The pixel size, every panel channel at once, the backend, its options and
    its model: each is a one-line :class:`~tiled_seg.errors.TiledSegError`
    within seconds instead of after the cluster has started.
    """
    slide = open_slide(slide_path, config.pixel_size_um)
    if slide.pixel_size_um is None:
        raise PixelSizeError(
            f"{slide.path} does not state its pixel size; give it with "
            "--pixel-size-um (or pixel_size_um in the config), e.g. 1.0 for IMC."
        )
    panel = config.panel
    membrane = () if config.compartment == "nuclear" else panel.membrane
    channels = tuple(dict.fromkeys([*panel.nuclear, *membrane]))
    _check_panel(slide, channels)
    primary = "nuclei" if config.compartment == "nuclear" else "cells"
    out_names = {"cells": config.outputs.cells, "nuclei": config.outputs.nuclei}
    written_names = list(out_names.values())
    if primary == "nuclei" and config.expand_nuclei_um is None:
        written_names = [out_names["nuclei"]]
    configured_backend(config).check_model()
    return Inputs(slide, slide.pixel_size_um, channels, membrane, primary, out_names, written_names)


def plan_run(inputs: Inputs, config: RunConfig) -> Plan:
    """Tile grid, halo, statistics level and the run's input fingerprint."""
    slide = inputs.slide
    halo_px = halo_px_for(config, inputs.pixel_size_um)
    grid = plan_tiles(slide.shape_yx, config.tiling.tile_px, halo_px, slide.chunk_yx)
    stats_level = _stats_level(slide, config)
    input_key = fingerprint(
        version=__version__, slide=slide.path if "://" in slide.path else str(Path(slide.path).resolve()),
        shape=slide.data.shape, dtype=str(slide.data.dtype),
        chunk_yx=slide.chunk_yx, pixel_size_um=inputs.pixel_size_um,
        config=config.model_dump(mode="json", exclude={"cluster"}),
    )
    return Plan(grid, halo_px, stats_level, input_key)


def _stats_level(slide: Slide, config: RunConfig) -> int:
    """The pyramid level the statistics are computed on, validated."""
    level_index = (
        choose_stats_level([lv.shape for lv in slide.levels], config.normalization.min_stats_pixels)
        if config.normalization.level == "auto"
        else int(config.normalization.level)
    )
    if not 0 <= level_index < len(slide.levels):
        raise TileLayoutError(
            f"normalization.level {level_index} does not exist; the slide has "
            f"{len(slide.levels)} levels."
        )
    return level_index



def check_h5ad(path: Path, inputs: Inputs, config: RunConfig, overwrite: bool) -> None:
    """An .h5ad file needs a measured run and, without ``overwrite``, a free path."""
    if not config.measure or (inputs.primary == "nuclei" and config.expand_nuclei_um is None):
        raise ConfigError(
            f"--h5ad {path} needs a cell table, which this run does not measure; set "
            "measure: true and, for a nuclear-only run, expand_nuclei_um."
        )
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")


def check_run(
    slide_path: str | Path,
    config: RunConfig,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    h5ad: str | Path | None = None,
) -> str:
    """Everything :func:`run` checks before it starts, without a cluster or a write.

    Opens the slide's metadata, checks the pixel size, the panel, the
    backend, its options and model, the tile layout and the output (exists,
    writable, not locked by another run). Takes seconds; the CLI calls it
    before it starts a cluster.

    Returns
    -------
    str
        The output store the run would write.

    Raises
    ------
    TiledSegError
        The first problem found, as :func:`run` would raise it.
    """
    inputs = open_inputs(slide_path, config)
    plan = plan_run(inputs, config)
    if h5ad is not None:
        check_h5ad(Path(h5ad), inputs, config, overwrite)
    check_unlocked(output_store(inputs.slide, None if output is None else str(output)))
    return check_output(inputs.slide, None if output is None else str(output),
                        inputs.written_names, overwrite=overwrite, resume=resume,
                        input_key=plan.input_key)
