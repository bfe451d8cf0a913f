"""Shared test helpers: the real-data folder and a marker that skips without it."""

from __future__ import annotations

from pathlib import Path

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
