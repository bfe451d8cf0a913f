"""Mesmer backend: processing on constructed maps, loading a SavedModel.

Equality with DeepCell's own code is in ``test_mesmer_deepcell.py``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends import SlideContext, mesmer
from tiled_seg.segment.backends import _mesmer_processing as processing


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _maps() -> tuple[np.ndarray, np.ndarray]:
    """Two touching cells of radius 8 px and one 9-px speck, as Mesmer would predict them."""
    shape = (48, 64)
    yy, xx = np.indices(shape)
    distance = np.zeros(shape)
    interior = np.zeros(shape)
    for cy, cx, r in [(24, 20, 8), (24, 35, 8), (8, 56, 1.7)]:
        disk = _disk(shape, cy, cx, r)
        distance = np.maximum(distance, np.where(disk, 1 - np.hypot(yy - cy, xx - cx) / (r + 1), 0))
        interior[disk] = 1.0
    return distance, interior


NO_SMOOTH = processing.WatershedSettings(interior_smooth_px=0)


def test_deep_watershed_finds_known_cells_and_drops_specks() -> None:
    distance, interior = _maps()
    labels = processing.deep_watershed(distance, interior, NO_SMOOTH)
    assert labels.max() == 2  # the 9-px speck is under 15 px
    assert labels[24, 20] != labels[24, 35] and labels[24, 20] > 0 and labels[24, 35] > 0
    assert labels[8, 56] == 0
    # Below the interior threshold nothing is labelled.
    assert processing.deep_watershed(distance, interior * 0.15, NO_SMOOTH).max() == 0


def test_deep_watershed_fills_holes_but_not_large_ones() -> None:
    distance, interior = _maps()
    interior[23:26, 19:22] = 0  # a 9-px hole in cell 1
    labels = processing.deep_watershed(distance, interior, NO_SMOOTH)
    assert labels[24, 20] > 0
    no_fill = processing.WatershedSettings(interior_smooth_px=0, max_hole_px=0)
    assert processing.deep_watershed(distance, interior, no_fill)[24, 20] == 0


def test_peaks_below_maxima_threshold_seed_nothing() -> None:
    distance, interior = _maps()
    assert processing.deep_watershed(distance * 0.05, interior, NO_SMOOTH).max() == 0


@pytest.mark.parametrize("shape", [(37, 53), (64, 64)])
@pytest.mark.parametrize("pixel_size_um", [0.39, 1.0])
def test_resize_to_model_mpp_and_back_restores_shape(shape, pixel_size_um) -> None:
    image = np.random.default_rng(0).random(shape + (2,), dtype=np.float32)
    factor = pixel_size_um / 0.5
    resized = processing.resize_input(image, pixel_size_um, 0.5)
    assert resized.shape == (int(shape[0] * factor), int(shape[1] * factor), 2)
    labels = np.arange(resized.shape[0] * resized.shape[1]).reshape(resized.shape[:2] + (1,))
    for stack in (labels, np.concatenate([labels, labels], -1)):
        back = processing.resize_output(stack, shape)
        assert back.shape == shape + stack.shape[2:] and set(np.unique(back)) <= set(labels.ravel())


def test_preprocess_clips_and_equalises() -> None:
    rng = np.random.default_rng(1)
    image = np.stack([rng.random((64, 64)), np.zeros((64, 64))], axis=-1).astype(np.float32)
    image[0, 0, 0] = 50.0
    out = processing.preprocess(image, percentile=99.9, clahe=True, kernel_size_px=32)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out[..., 0].min() and out[..., 0].max() <= 1.0
    assert not out[..., 1].any()  # a constant channel stays zero
    unclipped = processing.preprocess(image, percentile=None, clahe=False)
    assert unclipped[0, 0, 0] == 50.0


def test_split_outputs_orders_heads_by_name() -> None:
    heads = [np.full((1, 4, 4, k), float(i)) for i, k in enumerate([1, 3, 1, 3])]
    names = ["semantic_0", "semantic_1", "semantic_2", "semantic_3"]
    maps = processing.split_outputs(heads[::-1], names[::-1])
    assert maps["whole-cell"][0].max() == 0 and maps["nuclear"][1].max() == 3
    with pytest.raises(BackendError, match="4 output heads"):
        processing.split_outputs(heads[:3])


def test_missing_model_explains_how_to_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(mesmer.ENV_MODEL, raising=False)
    monkeypatch.setattr(mesmer, "DEEPCELL_CACHE", tmp_path / "cache")
    with pytest.raises(BackendError, match="DEEPCELL_ACCESS_TOKEN") as info:
        mesmer.find_model(None)
    assert str(tmp_path / "cache" / "MultiplexSegmentation") in str(info.value)
    seg = mesmer.MesmerSegmenter(dict(model_path=str(tmp_path / "nowhere"), use_deepcell_package=False))
    with pytest.raises(BackendError, match="nowhere"):
        seg.segment(np.zeros((8, 8), np.float32), None, SlideContext(pixel_size_um=1.0))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras model with Mesmer's input and four named heads, saved as a SavedModel."""
    tf_keras = pytest.importorskip("tf_keras")
    inputs = tf_keras.Input((None, None, 2))
    hidden = tf_keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = [
        tf_keras.layers.Conv2D(1, 1, activation="relu", name="semantic_0")(hidden),
        tf_keras.layers.Conv2D(3, 1, activation="softmax", name="semantic_1")(hidden),
        tf_keras.layers.Conv2D(1, 1, activation="relu", name="semantic_2")(hidden),
        tf_keras.layers.Conv2D(3, 1, activation="softmax", name="semantic_3")(hidden),
    ]
    path = tmp_path_factory.mktemp("mesmer") / "MultiplexSegmentation"
    tf_keras.Model(inputs, outputs).save(str(path), save_format="tf")
    return path


@pytest.mark.slow
def test_savedmodel_loads_once_and_segments(tiny_model: Path) -> None:
    seg = mesmer.MesmerSegmenter(dict(model_path=str(tiny_model), use_deepcell_package=False, window_px=64))
    before = mesmer.MesmerSegmenter.model_loads()
    rng = np.random.default_rng(2)
    nuclear, membrane = rng.random((2, 45, 70), dtype=np.float32)
    context = SlideContext(pixel_size_um=0.8)
    maps = seg.predict_maps(np.stack([nuclear, membrane], -1))
    assert maps["whole-cell"][0].shape == (45, 70) and maps["nuclear"][1].shape == (45, 70)
    for _ in range(2):
        result = seg.segment(nuclear, membrane, context)
        assert result.cells.shape == (45, 70) and result.cells.dtype == np.int32
        assert result.nuclei is not None and result.nuclei.shape == (45, 70)
    assert mesmer.MesmerSegmenter.model_loads() - before == 1


def test_model_found_in_deepcell_cache_tarball(tiny_model: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(mesmer.ENV_MODEL, raising=False)
    monkeypatch.setattr(mesmer, "DEEPCELL_CACHE", tmp_path)
    with tarfile.open(tmp_path / mesmer.MODEL_ARCHIVE, "w:gz") as tar:
        tar.add(tiny_model, arcname="MultiplexSegmentation")
    found = mesmer.find_model(None)
    assert found == tmp_path / "MultiplexSegmentation" and (found / "saved_model.pb").is_file()
