"""Inputs and outputs by URL: a run from s3:// to s3:// against a local moto server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import anndata as ad
import pandas as pd
import pytest
import zarr
from distributed import Client, LocalCluster

from tiled_seg.config import RunConfig
from tiled_seg.errors import OutputExistsError
from tiled_seg.io import read_labels
from tiled_seg.io.fs import exists, filesystem, is_url, join, remove_tree, same_location
from tiled_seg.io.tables import (
    list_tables,
    read_anndata_zarr,
    read_parquet,
    write_anndata_zarr,
    write_parquet,
)
from tiled_seg.pipeline import run
from tiled_seg.synth import make_slide

s3fs = pytest.importorskip("s3fs", reason="object-store tests need s3fs (the dev extra)")
pytest.importorskip("moto", reason="object-store tests need moto[server] (the dev extra)")

BUCKET = "tiled-seg-test"
SERVER_START_S = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on loopback, with the AWS variables s3fs and workers read."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto server did not start on {endpoint}")
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    try:
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def client(s3_endpoint):
    # Worker processes start after the AWS variables are set, as on a cluster
    # whose workers share the environment.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def slides(tmp_path_factory, s3_endpoint):
    local = make_slide(tmp_path_factory.mktemp("s3") / "slide.ome.zarr", size=(128, 128),
                       seed=3, chunk_px=32)
    url = f"s3://{BUCKET}/in/slide.ome.zarr"
    s3fs.S3FileSystem().put(str(local.path), url, recursive=True)
    return local.path, url


def test_fs_helpers_on_paths_and_urls(tmp_path, s3_endpoint):
    assert is_url("s3://b/x") and not is_url(tmp_path) and not is_url("file:///tmp/x")
    assert join("s3://b/x.zarr/", "tables", "t.parquet") == "s3://b/x.zarr/tables/t.parquet"
    assert same_location("s3://b/x/", "s3://b/x") and not same_location("s3://b/x", "s3://b/y")
    url = f"s3://{BUCKET}/fs/a/b.txt"
    assert not exists(url)
    fs, inner = filesystem(url)
    fs.pipe(inner, b"data")
    assert exists(url) and exists(f"s3://{BUCKET}/fs/a")
    remove_tree(f"s3://{BUCKET}/fs")
    assert not exists(url)
    remove_tree(f"s3://{BUCKET}/fs")  # absent: nothing to do


@pytest.mark.slow
def test_run_from_s3_to_s3_equals_local_run(tmp_path, slides, client):
    local, url = slides
    # Measuring over moto's S3 takes ~35 s (many small reads); tables are
    # written to S3 in test_tables_by_url instead.
    config = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": 64})
    expected = run(local, config, output=tmp_path / "local.zarr", client=client)
    output = f"s3://{BUCKET}/out/result.ome.zarr"
    result = run(url, config.with_overrides(measure=False), output=output, client=client)
    assert result.store == output
    assert result.n_cells == expected.n_cells > 20
    for name in ("cells", "nuclei"):
        got = read_labels(output, name).compute()
        want = read_labels(tmp_path / "local.zarr", name).compute()
        assert got.tobytes() == want.tobytes()
    assert not exists(output + ".tiled_seg_scratch")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        run(url, config, output=output, client=client)


@pytest.mark.slow
def test_tables_by_url(s3_endpoint):
    store = f"s3://{BUCKET}/tables/store.zarr"
    zarr.open_group(store, mode="w", zarr_format=3)
    table = pd.DataFrame({"cell_id": [1, 2, 3], "DNA1": [0.5, 1.5, 2.5]})
    path = write_parquet(table, join(store, "tables", "cells.parquet"))
    assert path.startswith("s3://") and exists(path)
    pd.testing.assert_frame_equal(read_parquet(path), table)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_parquet(table, path)
    adata = ad.AnnData(table[["DNA1"]].to_numpy(),
                       obs=pd.DataFrame({"cell_id": [1, 2, 3], "region": "labels/cells"},
                                        index=["1", "2", "3"]))
    written = write_anndata_zarr(adata, store, "cells", region="labels/cells")
    assert list_tables(store) == ["cells"]
    back = read_anndata_zarr(store, "cells")
    assert written == join(store, "tables", "cells")
    assert back.obs["cell_id"].tolist() == [1, 2, 3]
