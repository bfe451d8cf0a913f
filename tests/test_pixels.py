"""The built-in pixel classifier: features, the forest as arrays, training and its errors."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.errors import BackendError, ConfigError, InputNotFoundError
from tiled_seg.segment.pixels import (
    ILASTIK_SIGMAS,
    annotated_features,
    feature_names,
    feature_reach_px,
    feature_stack,
    load_classifier,
    predict_pixels,
    save_classifier,
    train_classifier,
)
from tiled_seg.synth import make_slide

SIGMAS = (0.7, 1.6, 3.5)


def _images(shape=(96, 80), seed=0):
    rng = np.random.default_rng(seed)
    from scipy import ndimage as ndi

    return [ndi.gaussian_filter(rng.random(shape), 2).astype(np.float32) for _ in range(2)]


def _annotations(shape=(96, 80), per_class=60, seed=1):
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    flat = rng.choice(out.size, 3 * per_class, replace=False)
    out.flat[flat] = np.repeat([1, 2, 3], per_class)
    return out


def test_feature_columns_and_names_agree():
    stack = feature_stack(_images(), ILASTIK_SIGMAS)
    names = feature_names(ILASTIK_SIGMAS, ["nuclear", "membrane"])
    # ilastik's set: smoothing at 0.3 px, eight features at each larger scale.
    assert stack.shape == (96, 80, 2 * (1 + 6 * 8)) == (96, 80, len(names))
    assert stack.dtype == np.float32 and np.isfinite(stack).all()


def test_features_of_a_crop_equal_the_whole_image_inside_the_reach():
    image = _images((160, 150))[0]
    reach = feature_reach_px(SIGMAS)
    whole = feature_stack([image], SIGMAS)
    crop = feature_stack([image[20:140, 10:130]], SIGMAS)
    inner = slice(reach, -reach)
    assert np.array_equal(crop[inner, inner], whole[20:140, 10:130][inner, inner])
    # One px less halo and the structure tensor at 3.5 px differs.
    assert not np.array_equal(crop[inner.start - 1, inner], whole[20 + inner.start - 1, 10:130][inner])


def test_hessian_eigenvalues_of_a_bright_blob_are_negative_at_its_centre():
    yy, xx = np.mgrid[-20:21, -20:21]
    blob = np.exp(-(yy**2 + xx**2) / (2 * 4.0**2)).astype(np.float32)
    columns = dict(zip(feature_names([3.5], ["b"]), np.moveaxis(feature_stack([blob], [3.5]), -1, 0)))
    assert columns["b:hessian_max:3.5"][20, 20] < 0 and columns["b:hessian_min:3.5"][20, 20] < 0
    assert columns["b:log:3.5"][20, 20] < 0
    assert columns["b:gradient:3.5"][20, 20] < columns["b:gradient:3.5"][20, 26]


@pytest.mark.model
def test_save_load_round_trip_predicts_identically_without_pickle(tmp_path):
    sklearn = pytest.importorskip("sklearn.ensemble")
    images, annotations = _images(), _annotations()
    classifier = train_classifier(images, annotations, pixel_size_um=0.5, sigmas=SIGMAS,
                                  n_estimators=12)
    path = save_classifier(classifier, tmp_path / "model")
    assert path.name == "model.npz"
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            assert not archive.read(name).startswith(b"\x80")  # no pickle stream anywhere
    loaded = load_classifier(path)
    assert (loaded.sigmas, loaded.classes, loaded.pixel_size_um) == (SIGMAS, ("nucleus", "cytoplasm", "background"), 0.5)
    before, after = predict_pixels(classifier, images), predict_pixels(loaded, images)
    assert before.shape == (3, 96, 80)
    assert np.array_equal(before, after)
    np.testing.assert_allclose(before.sum(axis=0), 1.0, atol=1e-5)
    # The numpy walk equals scikit-learn's own forest with the same seed.
    features, classes = annotated_features(images, annotations, SIGMAS)
    forest = sklearn.RandomForestClassifier(n_estimators=12, random_state=0, n_jobs=1).fit(features, classes)
    rows = feature_stack(images, SIGMAS).reshape(-1, features.shape[1])
    np.testing.assert_allclose(loaded.predict_proba(rows), forest.predict_proba(rows), atol=1e-6)


@pytest.mark.model
def test_training_is_reproducible(tmp_path):
    images, annotations = _images(), _annotations()
    first = train_classifier(images, annotations, pixel_size_um=1.0, sigmas=SIGMAS, n_estimators=5)
    second = train_classifier(images, annotations, pixel_size_um=1.0, sigmas=SIGMAS, n_estimators=5)
    assert np.array_equal(first.threshold, second.threshold)
    assert np.array_equal(first.value, second.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a[:-1], r"shape \(95, 80\).*same \(Y, X\) grid"),
        (lambda a: np.where(a == 2, 0, a), r"no pixels of class 2 \(cytoplasm\)"),
        (lambda a: np.where(a == 3, 7, a), r"values outside 0-3"),
        (lambda a: a.astype(np.float32), r"integer labels"),
    ],
)
def test_bad_annotations_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        train_classifier(_images(), change(_annotations()), pixel_size_um=1.0, sigmas=SIGMAS)


def test_loading_a_missing_or_foreign_file_names_the_fix(tmp_path):
    with pytest.raises(InputNotFoundError, match="train-pixels"):
        load_classifier(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(BackendError, match="not a tiled-seg pixel classifier"):
        load_classifier(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(BackendError, match="not a tiled-seg pixel classifier"):
        load_classifier(tmp_path / "text.npz")


@pytest.mark.model
def test_train_pixels_command_on_a_slide(tmp_path):
    slide = make_slide(tmp_path / "slide.ome.zarr", size=(128, 128), seed=2, chunk_px=64)
    from tiled_seg.io.ngff import read_labels

    nuclei = read_labels(slide.path, "gt_nuclei").compute()
    cells = read_labels(slide.path, "gt_cells").compute()
    truth = np.where(nuclei > 0, 1, np.where(cells > 0, 2, 3)).astype(np.uint8)
    annotations = np.where(np.random.default_rng(0).random(truth.shape) < 0.05, truth, 0)
    tifffile.imwrite(tmp_path / "annotations.tif", annotations)
    result = CliRunner().invoke(main, [
        "train-pixels", str(slide.path), "--annotations", str(tmp_path / "annotations.tif"),
        "--output", str(tmp_path / "model.npz"), "--sigmas", "0.7,1.6", "--trees", "4",
        "--nuclear", "DNA1,DNA2",
    ])
    assert result.exit_code == 0, result.output
    assert "annotated px: nucleus" in result.output and "halo needed: 9 px" in result.output
    model = load_classifier(tmp_path / "model.npz")
    assert model.inputs == ("nuclear", "membrane") and model.pixel_size_um == slide.pixel_size_um
    bad = CliRunner().invoke(main, [
        "train-pixels", str(slide.path), "--annotations", str(tmp_path / "annotations.tif"),
        "--output", str(tmp_path / "model.npz"), "--sigmas", "0,1",
    ])
    assert bad.exit_code == 2 and "--sigmas" in bad.output


def test_train_pixels_refuses_a_panel_store(tmp_path):
    from tiled_seg.config import RunConfig
    from tiled_seg.segment.pixels import train_pixels

    config = RunConfig().with_overrides(**{"panel.store": str(tmp_path / "probs.ome.zarr")})
    with pytest.raises(ConfigError, match="not panel.store"):
        train_pixels(tmp_path / "slide.ome.zarr", tmp_path / "a.tif", tmp_path / "m.npz", config=config)
