"""The mesmer backend's processing equals DeepCell's own code, pixel for pixel.

The reference is ``deepcell-toolbox`` 0.12.1 (installed by ``make test``; see
the Makefile) plus the few lines of ``deepcell.applications.Mesmer`` /
``Application`` (deepcell 0.12) that glue it together, spelled out in
:func:`_deepcell_mesmer` because ``deepcell`` itself needs Python < 3.11.
A missing toolbox fails these tests with the reason; it never skips them.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from tiled_seg.segment.backends import SlideContext, mesmer
from tiled_seg.segment.backends import _mesmer_processing as processing
from tiled_seg.segment.backends._blended_windows import predict_blended

INSTALL = (
    "pip install cython wheel setuptools opencv-python-headless && pip install "
    "--no-build-isolation --ignore-requires-python --no-deps deepcell-toolbox==0.12.1"
)


@pytest.fixture(scope="module")
def toolbox():
    """deepcell_toolbox, or a failure that says why it is missing and how to install it."""
    try:
        from deepcell_toolbox import deep_watershed, utils
        from deepcell_toolbox import processing as dc_processing
    except ImportError as error:
        pytest.fail(
            f"deepcell-toolbox 0.12.1 is not importable ({error}); the DeepCell equality "
            f"tests need it. `make test` installs it (a failed build is logged in "
            f".venv/deepcell-toolbox.log); by hand: {INSTALL}",
            pytrace=False,
        )
    from importlib.metadata import version

    assert version("DeepCell-Toolbox") == "0.12.1"
    return deep_watershed, dc_processing, utils


def _exclusive(size_px: int) -> int:
    """The toolbox's size argument that removes objects and holes of fewer than ``size_px``.

    Where DeepCell runs (Python < 3.11, scikit-image < 0.26) its
    ``remove_small_objects(min_size=n)`` and ``remove_small_holes(area_threshold=n)``
    act on sizes below n. scikit-image 0.26 passes these deprecated
    arguments on as ``max_size`` (sizes up to n), so on it the toolbox
    needs n - 1 to compute what DeepCell computes.
    """
    from skimage import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return size_px - 1 if (major, minor) >= (0, 26) else size_px


def _kwargs(settings: processing.WatershedSettings) -> dict[str, float]:
    return {
        "maxima_threshold": settings.maxima_threshold,
        "maxima_smooth": settings.maxima_smooth_px,
        "interior_threshold": settings.interior_threshold,
        "interior_smooth": settings.interior_smooth_px,
        "small_objects_threshold": _exclusive(settings.min_object_px),
        "fill_holes_threshold": _exclusive(settings.max_hole_px),
        "radius": settings.radius_px,
    }


def _constructed_maps(seed: int, shape=(160, 200)) -> tuple[np.ndarray, np.ndarray]:
    """Touching round cells with ragged, holed interiors, as float32 network maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    distance = np.zeros(shape)
    interior = np.zeros(shape)
    for cy, cx, r in zip(rng.uniform(0, shape[0], 60), rng.uniform(0, shape[1], 60), rng.uniform(3, 10, 60)):
        d = np.hypot(yy - cy, xx - cx)
        distance = np.maximum(distance, np.clip(1 - d / r, 0, None))
        interior = np.maximum(interior, (d < r) * rng.uniform(0.4, 1.0))
    interior *= rng.random(shape) > 0.08  # pepper holes of every size
    interior = np.clip(interior + 0.1 * rng.standard_normal(shape), 0, 1)
    return distance.astype(np.float32), interior.astype(np.float32)


def _differing(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int((a != b).sum())


def test_preprocess_equals_deepcell(toolbox) -> None:
    _, dc, _ = toolbox
    rng = np.random.default_rng(3)
    image = np.stack([
        rng.gamma(2.0, 1.0, (300, 260)) * (rng.random((300, 260)) > 0.3),
        np.zeros((300, 260)),
    ], axis=-1).astype(np.float32)
    image[5, 5, 0] = 400.0
    ours = processing.preprocess(image)
    theirs = dc.histogram_normalization(dc.percentile_threshold(image[None], 99.9), kernel_size=128)[0]
    assert _differing(ours, theirs) == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("name", ["WHOLE_CELL", "NUCLEAR"])
def test_deep_watershed_equals_deepcell_on_constructed_maps(toolbox, seed, name) -> None:
    deep_watershed, _, _ = toolbox
    settings = getattr(processing, name)
    distance, interior = _constructed_maps(seed)
    ours = processing.deep_watershed(distance, interior, settings)
    theirs = deep_watershed.deep_watershed(
        [distance[None, ..., None], interior[None, ..., None]], **_kwargs(settings)
    )[0, ..., 0]
    assert ours.max() > 20
    assert _differing(ours, theirs) == 0


def test_fill_holes_equals_deepcell_where_pieces_touch_the_box_and_other_objects(toolbox) -> None:
    _, _, utils = toolbox
    rng = np.random.default_rng(7)
    labels = ndi.label(rng.random((120, 120)) > 0.35)[0]
    expected = utils.fill_holes(labels, size=_exclusive(15))
    ours = processing.fill_holes(labels, 15)
    assert _differing(ours, labels) > 0  # the case is not trivial
    assert _differing(ours, expected) == 0


@pytest.mark.parametrize("shape", [(600, 333), (256, 256), (257, 900), (100, 120)])
def test_blended_windows_equal_deepcell_tiling(toolbox, shape) -> None:
    _, _, utils = toolbox
    rng = np.random.default_rng(4)
    image = rng.random(shape + (2,), dtype=np.float32)

    def predict(batch: np.ndarray) -> list[np.ndarray]:
        # Depends on the window's position in the batch, so misplaced windows show.
        smooth = ndi.uniform_filter(batch, size=(1, 5, 5, 1))
        return [np.tanh(3 * smooth[..., :1] - batch[..., 1:]), smooth ** 2]

    ours = predict_blended(image, predict, 256, batch_size=4)
    theirs = _deepcell_tiled(utils, image[None], predict, 256)
    for a, b in zip(ours, theirs):
        assert _differing(a, b[0]) == 0


@pytest.mark.parametrize("pixel_size_um", [0.39, 0.8, 1.0])
def test_resize_equals_deepcell(toolbox, pixel_size_um) -> None:
    _, _, utils = toolbox
    image = np.random.default_rng(5).random((141, 97, 2), dtype=np.float32)
    factor = pixel_size_um / 0.5
    expected = utils.resize(image[None], (int(141 * factor), int(97 * factor)))[0]
    resized = processing.resize_input(image, pixel_size_um, 0.5)
    assert _differing(resized, expected) == 0
    labels = np.arange(resized.shape[0] * resized.shape[1], dtype=np.int32).reshape(resized.shape[:2])
    for stack in (labels[..., None], np.stack([labels, labels[::-1]], -1)):
        theirs = utils.resize(stack[None], (141, 97), labeled_image=True)[0]
        assert _differing(processing.resize_output(stack, (141, 97)), theirs) == 0


def _deepcell_tiled(utils, image: np.ndarray, predict, window: int) -> list[np.ndarray]:
    """``Application._tile_input`` / ``_batch_predict`` / ``_untile_output`` of deepcell 0.12."""
    x_diff, y_diff = image.shape[1] - window, image.shape[2] - window
    if x_diff < 0 or y_diff < 0:
        x_diff, y_diff = abs(x_diff), abs(y_diff)
        x_pad = (x_diff // 2, x_diff // 2 + 1) if x_diff % 2 else (x_diff // 2, x_diff // 2)
        y_pad = (y_diff // 2, y_diff // 2 + 1) if y_diff % 2 else (y_diff // 2, y_diff // 2)
        tiles = np.pad(image, [(0, 0), x_pad, y_pad, (0, 0)], "reflect")
        info = {"padding": True, "x_pad": x_pad, "y_pad": y_pad}
    else:
        tiles, info = utils.tile_image(image, model_input_shape=(window, window),
                                       stride_ratio=0.75, pad_mode="constant")
    outputs: list[np.ndarray] = []
    for i in range(0, tiles.shape[0], 4):
        batch_outputs = predict(tiles[i:i + 4])
        if not outputs:
            outputs = [np.zeros((tiles.shape[0],) + o.shape[1:], tiles.dtype) for o in batch_outputs]
        for j, out in enumerate(batch_outputs):
            outputs[j][i:i + 4] = out
    if info.get("padding"):
        (x0, x1), (y0, y1) = info["x_pad"], info["y_pad"]
        return [o[:, x0:o.shape[1] - x1, y0:o.shape[2] - y1] for o in outputs]
    return [utils.untile_image(o, info) for o in outputs]


def _deepcell_mesmer(toolbox, model, image: np.ndarray, image_mpp: float, window: int,
                     compartment: str) -> np.ndarray:
    """``Mesmer.predict(image, image_mpp, compartment)`` of deepcell 0.12, from the toolbox."""
    deep_watershed, dc, utils = toolbox
    original_shape = image.shape
    if image_mpp not in {None, 0.5}:
        factor = image_mpp / 0.5
        image = utils.resize(image, (int(image.shape[1] * factor), int(image.shape[2] * factor)))
    image = dc.histogram_normalization(dc.percentile_threshold(np.copy(image), 99.9), kernel_size=128)
    outputs = _deepcell_tiled(utils, image, lambda b: model.predict(b, batch_size=4, verbose=0), window)
    formatted = {
        "whole-cell": [outputs[0], outputs[1][..., 1:2]],
        "nuclear": [outputs[2], outputs[3][..., 1:2]],
    }
    cell = lambda: deep_watershed.deep_watershed(formatted["whole-cell"], **_kwargs(processing.WHOLE_CELL))
    nuc = lambda: deep_watershed.deep_watershed(formatted["nuclear"], **_kwargs(processing.NUCLEAR))
    labels = {"whole-cell": cell, "nuclear": nuc}.get(compartment)
    stack = labels() if labels else np.concatenate([cell(), nuc()], axis=-1)
    if stack.shape[1:-1] != original_shape[1:-1]:
        stack = utils.resize(stack, original_shape[1:-1], labeled_image=True)
    return stack[0]


def _tissue(shape=(150, 170), seed=6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    nuclear = np.zeros(shape)
    membrane = np.zeros(shape)
    for cy, cx in zip(rng.uniform(0, shape[0], 70), rng.uniform(0, shape[1], 70)):
        d = np.hypot(yy - cy, xx - cx)
        nuclear += np.exp(-((d / 3.0) ** 2))
        membrane += np.exp(-(((d - 6.0) / 1.5) ** 2))
    noise = 0.05 * rng.random((2,) + shape)
    return (nuclear + noise[0]).astype(np.float32), (0.5 * membrane + noise[1]).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("compartment", ["both", "whole-cell", "nuclear"])
def test_backend_equals_deepcell_mesmer_on_the_model_outputs(toolbox, map_model, compartment) -> None:
    nuclear, membrane = _tissue()
    pixel_size_um = 0.8
    seg = mesmer.MesmerSegmenter(dict(model_path=str(map_model), use_deepcell_package=False,
                                      window_px=64, compartment=compartment))
    image = np.stack([nuclear, membrane], axis=-1)
    prepared = processing.preprocess(processing.resize_input(image, pixel_size_um, 0.5))
    ours = seg.label_stack(seg.predict_maps(prepared), nuclear.shape)
    theirs = _deepcell_mesmer(toolbox, seg.model, image[None], pixel_size_um, 64, compartment)
    for index, name in enumerate(ours):
        assert theirs[..., index].max() > 20, name
        assert _differing(ours[name], theirs[..., index]) == 0, name
    # The backend's result is that stack, relabelled and with nuclei linked to cells.
    result = seg.segment(nuclear, membrane, SlideContext(pixel_size_um=pixel_size_um))
    first = ours.get("whole-cell", ours.get("nuclear"))
    assert (result.cells > 0).sum() == (first > 0).sum()
