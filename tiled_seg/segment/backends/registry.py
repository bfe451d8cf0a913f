"""Backend registry: names to segmenter classes, one instance per process."""

from __future__ import annotations

import importlib
import json
import threading
from importlib.metadata import entry_points
from typing import Any

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends.base import Segmenter

__all__ = ["available_backends", "get_segmenter_class", "get_segmenter", "load_count"]

#: Built-in backends, imported lazily so their heavy libraries load only on use.
_BUILTIN = {
    "watershed": "tiled_seg.segment.backends.watershed:WatershedSegmenter",
    "onnx": "tiled_seg.segment.backends.onnx:OnnxSegmenter",
    "cellpose": "tiled_seg.segment.backends.cellpose:CellposeSegmenter",
    "mesmer": "tiled_seg.segment.backends.mesmer:MesmerSegmenter",
    "stardist": "tiled_seg.segment.backends.stardist:StardistSegmenter",
    "probabilities": "tiled_seg.segment.backends.probabilities:ProbabilitiesSegmenter",
}
_ENTRY_POINT_GROUP = "tiled_seg.segmenters"

_instances: dict[tuple[str, str], Segmenter] = {}
_lock = threading.Lock()
_loads = 0


def _declared() -> dict[str, str]:
    declared = dict(_BUILTIN)
    for entry in entry_points(group=_ENTRY_POINT_GROUP):
        declared.setdefault(entry.name, entry.value)
    return declared


def available_backends() -> list[str]:
    """Names of the built-in and entry-point backends."""
    return sorted(_declared())


def get_segmenter_class(name: str) -> type[Segmenter]:
    """The segmenter class registered as ``name``."""
    declared = _declared()
    if name not in declared:
        raise BackendError(
            f"unknown backend {name!r}; available: {', '.join(sorted(declared))}."
        )
    module_name, _, class_name = declared[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackendError(
            f"backend {name!r} needs a package that is not installed ({error.name}); "
            f"install it with `pip install 'tiled-seg[{name}]'`."
        ) from error
    return getattr(module, class_name)


def get_segmenter(name: str, options: dict[str, Any] | None = None) -> Segmenter:
    """The process-wide instance of backend ``name`` with ``options``.

    A model is loaded once per worker process: later calls with the same name
    and options return the same instance.
    """
    global _loads
    key = (name, json.dumps(options or {}, sort_keys=True, default=str))
    with _lock:
        if key not in _instances:
            _instances[key] = get_segmenter_class(name)(options or {})
            _loads += 1
        return _instances[key]


def load_count() -> int:
    """How many segmenter instances this process has created (for tests)."""
    return _loads
