"""Backend registry: lazy import, one instance and one model load per process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, requires_data

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends import (
    SlideContext,
    available_backends,
    get_segmenter,
    get_segmenter_class,
    registry,
)
from tiled_seg.segment.backends import onnx as onnx_backend


def test_builtin_backends_are_listed() -> None:
    assert {"watershed", "onnx", "cellpose", "mesmer", "stardist", "probabilities"} <= set(available_backends())
    with pytest.raises(BackendError, match="unknown backend"):
        get_segmenter_class("nope")


@pytest.mark.parametrize("name", ["onnx", "cellpose", "mesmer"])
def test_model_backends_construct_without_loading(name: str) -> None:
    cls = get_segmenter_class(name)
    segmenter = cls({})
    assert segmenter.max_cell_diameter_um > 0
    assert cls.uses_gpu == (name in ("cellpose", "mesmer"))


def test_missing_package_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(registry._BUILTIN, "fake", "tiled_seg_no_such_module:Nope")
    with pytest.raises(BackendError, match=r"tiled-seg\[fake\]"):
        get_segmenter_class("fake")


@pytest.mark.slow
@requires_data("models/unet2d_nuclei_broad/bioimageio.yaml")
def test_model_loaded_once_for_many_calls() -> None:
    options = {"model": str(DATA / "models" / "unet2d_nuclei_broad"), "threshold": 0.45}
    sessions, instances = onnx_backend.OnnxSegmenter.model_loads(), registry.load_count()
    context = SlideContext(pixel_size_um=1.0)
    tile = np.zeros((64, 64), np.float32)
    for _ in range(4):
        segmenter = get_segmenter("onnx", dict(options))
        segmenter.segment(tile, None, context)
    assert segmenter is get_segmenter("onnx", dict(options))
    assert registry.load_count() - instances == 1
    assert onnx_backend.OnnxSegmenter.model_loads() - sessions == 1
