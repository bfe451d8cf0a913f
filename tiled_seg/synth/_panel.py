"""Cell types and the marker panel of synthetic slides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiled_seg.synth._random import _stream, _uniform

#: Cell types, in the order of ``SynthInfo.cell_type_counts``.
CELL_TYPES = ("tumour", "T", "B", "macrophage", "stroma")
_TUMOUR, _T, _B, _MAC, _STROMA = range(5)


@dataclass(frozen=True)
class _CellType:
    hard_core_um: float  # half the smallest centre distance to a neighbour
    radius_um: tuple[float, float]  # cell radius range before irregularity
    a2: tuple[float, float]  # elongation (2nd angular harmonic of the radius)
    a3_max: float  # 3rd angular harmonic
    nucleus_radius_um: tuple[float, float]  # equivalent radius of the nucleus
    nucleus_aspect: tuple[float, float]


_TYPES = (
    _CellType(5.2, (7.0, 9.5), (0.0, 0.12), 0.07, (3.4, 4.4), (1.0, 1.4)),
    _CellType(3.5, (5.0, 6.5), (0.0, 0.08), 0.05, (2.8, 3.4), (1.0, 1.2)),
    _CellType(3.5, (5.0, 6.5), (0.0, 0.08), 0.05, (2.8, 3.5), (1.0, 1.2)),
    _CellType(4.6, (7.0, 9.5), (0.0, 0.15), 0.10, (2.9, 3.8), (1.1, 1.6)),
    _CellType(4.0, (5.5, 8.0), (0.2, 0.40), 0.05, (2.6, 3.4), (1.6, 2.4)),
)


@dataclass(frozen=True)
class _Marker:
    """A channel: where it is expressed, by whom, how bright (counts/px).

    ``levels`` maps a cell type to ``(level, lo, hi)``: a cell of that type
    expresses the marker when its uniform draw on ``stream`` lies in
    ``[lo, hi)``; markers sharing a stream thus pick exclusive subsets.
    """

    name: str
    compartment: str  # nuclear, membrane, cytoplasm or extracellular
    levels: dict[int, tuple[float, float, float]]
    stream: str = "all"
    sigma: float = 0.4  # lognormal cell-to-cell variation
    background: float = 0.4
    variation_key: str = ""  # markers with the same key vary together


_ALL = (0.0, 1.0)
_MARKERS = (
    _Marker("DNA1", "nuclear", {t: (32.0, *_ALL) for t in range(5)}, sigma=0.35,
            background=0.8, variation_key="DNA"),
    _Marker("NaKATPase", "membrane",
            {_TUMOUR: (16.0, *_ALL), _T: (9.0, *_ALL), _B: (9.0, *_ALL),
             _MAC: (11.0, *_ALL), _STROMA: (9.0, *_ALL)}, sigma=0.5),
    _Marker("CD3", "membrane", {_T: (14.0, *_ALL)}),
    _Marker("CD20", "membrane", {_B: (14.0, *_ALL)}),
    _Marker("CD68", "cytoplasm", {_MAC: (12.0, *_ALL)}),
    _Marker("PanKeratin", "cytoplasm", {_TUMOUR: (20.0, *_ALL)}, sigma=0.5),
    _Marker("CD45", "membrane", {_T: (12.0, *_ALL), _B: (12.0, *_ALL), _MAC: (8.0, *_ALL)}),
    _Marker("CD44", "membrane",
            {_TUMOUR: (6.0, *_ALL), _T: (8.0, *_ALL), _B: (6.0, *_ALL),
             _MAC: (10.0, *_ALL), _STROMA: (10.0, *_ALL)}, sigma=0.7),
    _Marker("DNA2", "nuclear", {t: (52.0, *_ALL) for t in range(5)}, sigma=0.35,
            background=1.2, variation_key="DNA"),
    _Marker("Vimentin", "cytoplasm", {_STROMA: (14.0, *_ALL), _MAC: (5.0, *_ALL)}),
    _Marker("SMA", "cytoplasm", {_STROMA: (18.0, 0.0, 0.4)}, stream="stroma"),
    _Marker("Ki67", "nuclear", {_TUMOUR: (12.0, 0.0, 0.3), _T: (10.0, 0.0, 0.08),
                                _B: (10.0, 0.0, 0.15)}, stream="prolif", background=0.2),
    _Marker("CD8", "membrane", {_T: (11.0, 0.0, 0.4)}, stream="Tsub"),
    _Marker("CD4", "membrane", {_T: (9.0, 0.4, 1.0), _MAC: (3.0, *_ALL)}, stream="Tsub"),
    _Marker("CD31", "membrane", {_STROMA: (13.0, 0.75, 1.0)}, stream="stroma"),
    _Marker("HLA-DR", "membrane", {_B: (10.0, *_ALL), _MAC: (12.0, *_ALL)}),
    _Marker("FOXP3", "nuclear", {_T: (8.0, 0.4, 0.48)}, stream="Tsub", background=0.2),
    _Marker("CD11c", "membrane", {_MAC: (7.0, 0.0, 0.5)}, stream="macsub"),
    _Marker("Collagen1", "extracellular", {}, background=0.5),
    _Marker("E-Cadherin", "membrane", {_TUMOUR: (12.0, *_ALL)}, sigma=0.5),
    _Marker("GranzymeB", "cytoplasm", {_T: (7.0, 0.0, 0.15)}, stream="Tsub"),
    _Marker("CD163", "membrane", {_MAC: (8.0, 0.2, 1.0)}, stream="macsub"),
)


def _generic_marker(seed: int, index: int) -> _Marker:
    """A made-up marker ``Marker_<index>`` expressed by part of one cell type."""
    u = _uniform(seed, _stream(f"generic{index}"), np.arange(3)[:, None], np.zeros((1, 1), np.int64))
    kind = int(u[0, 0] * 5)
    compartment = ("membrane", "cytoplasm", "nuclear")[int(u[1, 0] * 3)]
    return _Marker(f"Marker_{index}", compartment, {kind: (6.0 + 8.0 * float(u[2, 0]), 0.0, 0.6)},
                   stream=f"generic{index}")


def _markers(seed: int, n_channels: int) -> tuple[_Marker, ...]:
    named = _MARKERS[:n_channels]
    return named + tuple(_generic_marker(seed, i) for i in range(len(named), n_channels))


def channel_names_for(n_channels: int) -> list[str]:
    """Channel names of a synthetic slide with ``n_channels`` channels.

    DNA1, one membrane marker and the cell-type markers come first; beyond
    the named panel, channels are called ``Marker_<index>``.

    >>> channel_names_for(4)
    ['DNA1', 'NaKATPase', 'CD3', 'CD20']
    """
    return [m.name for m in _markers(0, n_channels)]
