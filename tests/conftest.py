"""Shared test helpers: the real-data folder, a marker that skips without it, shared fixtures.

Markers (registered in pyproject.toml): ``slow`` (more than a second or two),
``cluster`` (starts a Dask cluster: every test using the ``client`` fixture
gets it here) and ``model`` (needs a model library: the backend test modules,
and every test using ``map_model``). ``make test-quick`` runs the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

#: Real data kept outside the repository (see ../shared/data/README.md).
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def requires_data(subpath: str) -> pytest.MarkDecorator:
    """Skip a test, with a clear reason, when ``DATA / subpath`` is absent.

    Use as ``@requires_data("mibi_tnbc_fov8/fov8_mibitiff_22ch.tiff")``; the
    test then reads the file as ``DATA / subpath``.
    """
    path = DATA / subpath
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"real data {path} is absent (a fresh clone lacks ../shared/data; CI has it)",
    )


@pytest.fixture(scope="session")
def client():
    """Two local worker processes shared by the tests that run the pipeline.

    Not the default dask client: only code handed this client computes on it.
    """
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as shared:
        yield shared


#: Test modules that exercise a model library (TensorFlow, PyTorch, onnxruntime).
_MODEL_MODULES = {"test_cellpose.py", "test_mesmer.py", "test_mesmer_deepcell.py", "test_onnx.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they start: a cluster (the ``client`` fixture) or a model."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "client" in fixtures:
            item.add_marker(pytest.mark.cluster)
        if "map_model" in fixtures or item.path.name in _MODEL_MODULES:
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory: pytest.TempPathFactory):
    """A 128 x 128 px synthetic slide in 32 px chunks, shared by the tests of a session.

    Read-only: tests that run on it write to another ``--output`` (a test that
    changes it in place makes its own slide).
    """
    from tiled_seg.synth import make_slide

    return make_slide(tmp_path_factory.mktemp("small_slide") / "slide.ome.zarr",
                      size=(128, 128), seed=5, chunk_px=32)


@pytest.fixture(scope="session")
def map_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel with Mesmer's input and fixed-weight heads whose maps hold cells.

    Inner distances are a smoothed nuclear channel, the interior class
    follows nuclear plus membrane signal, so the deep watershed finds cells.
    """
    tf_keras = pytest.importorskip("tf_keras")
    inputs = tf_keras.Input((None, None, 2))
    smooth = tf_keras.layers.AveragePooling2D(5, strides=1, padding="same")(inputs)
    heads = []
    for index, (distance, logits) in enumerate([((1.0, 0.0), (0.0, 6.0, 4.0)), ((1.2, 0.0), (0.0, 7.0, 0.0))]):
        d = tf_keras.layers.Conv2D(1, 1, activation="relu", name=f"semantic_{2 * index}")
        p = tf_keras.layers.Conv2D(3, 1, activation="softmax", name=f"semantic_{2 * index + 1}")
        heads += [d(smooth), p(smooth)]
        d.set_weights([np.array(distance, np.float32).reshape(1, 1, 2, 1), np.array([-0.2], np.float32)])
        w = np.zeros((1, 1, 2, 3), np.float32)
        w[0, 0, 0, 1], w[0, 0, 1, 1] = logits[1], logits[2]
        p.set_weights([w, np.array([0.0, -2.5, 0.0], np.float32)])
    path = tmp_path_factory.mktemp("mesmer_maps") / "MultiplexSegmentation"
    tf_keras.Model(inputs, heads).save(str(path), save_format="tf")
    return path
