"""Issue 13's interoperability table on fresh stores, in place and --output, NGFF 0.5 and 0.4.

Run with the interop environment (``make .venv-interop/.installed``), which
has every reader: ``.venv-interop/bin/python benchmarks/interop_table.py WORKDIR``.
Prints one JSON record per store: ome-zarr-models + yaozarrs, ome-zarr-py's
Reader and ``ome_zarr info``, napari-ome-zarr's reader (and its contrast
limits against the data), the SpatialData export read back, the AnnData table's
SpatialData attributes, steinbock's readers on ``measure --steinbock``, and
ngff-zarr's validation where ngff-zarr is installed (image strict; the label's
strict schema wants a ``colors`` list, which tiled_seg deliberately omits).
"""
import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("workdir", type=Path, help="a new or empty folder for the stores (it is not cleared)")
work = parser.parse_args().workdir
if work.exists() and any(work.iterdir()):
    sys.exit(f"{work} is not empty; give a new or empty folder.")
work.mkdir(parents=True, exist_ok=True)
B = Path(sys.executable).parent
def sh(*a):
    r = subprocess.run([str(B / "tiled-seg"), *a], capture_output=True, text=True, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
rows = {}
for v in ("0.5", "0.4"):
    sh("synth", f"in{v}.ome.zarr", "--size", "512", "512", "--seed", "1", "--ngff-version", v)
    shutil.copytree(work / f"in{v}.ome.zarr", work / f"src{v}.ome.zarr")
    sh("run", f"in{v}.ome.zarr", "--tile-size", "256", "--workers", "1")
    sh("run", f"src{v}.ome.zarr", "--output", f"out{v}.ome.zarr", "--tile-size", "256", "--workers", "1")
    sh("measure", f"in{v}.ome.zarr", "--overwrite", "--steinbock", f"sb{v}")
    for kind, store in (("in-place", f"in{v}.ome.zarr"), ("--output", f"out{v}.ome.zarr")):
        p = str(work / store); res = {}
        import ome_zarr_models
        import yaozarrs
        try:
            ome_zarr_models.open_ome_zarr(p); yaozarrs.validate_zarr_store(p)
            for lab in ("cells", "nuclei"):
                ome_zarr_models.open_ome_zarr(f"{p}/labels/{lab}"); yaozarrs.validate_zarr_store(f"{p}/labels/{lab}")
            res["ome-zarr-models + yaozarrs"] = "pass"
        except Exception as e: res["ome-zarr-models + yaozarrs"] = f"FAIL {e!r}"[:200]
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader
        nodes = list(Reader(parse_url(p))())
        info = subprocess.run([str(B / "ome_zarr"), "info", p], capture_output=True, text=True).stdout
        res["ome-zarr Reader / ome_zarr info"] = f"{len(nodes)} nodes, info {len(info.splitlines())} lines"
        from napari_ome_zarr._reader import napari_get_reader
        layers = napari_get_reader(p)(p)
        img = [l for l in layers if l[2] == "image"][0]
        limits = img[1]["contrast_limits"]
        import zarr
        data = np.asarray(zarr.open_group(p)["0"][0])
        res["napari-ome-zarr"] = (f"{len(layers)} layers ({sum(l[2]=='labels' for l in layers)} labels); "
                                  f"DNA1 window {limits[0]} vs data p99.9 {np.percentile(data, 99.9):.0f}")
        import spatialdata as sd
        out = work / f"{Path(store).stem}.sdata.zarr"
        sh("export", "spatialdata", store, str(out))
        s = sd.read_zarr(out); t = s.tables["cell_table"]
        res["export spatialdata -> read_zarr"] = (f"images {list(s.images)}, labels {sorted(s.labels)}, table {t.n_obs} rows annotating "
                                                  f"{t.uns['spatialdata_attrs']['region']}")
        import anndata as ad
        a = ad.read_zarr(f"{p}/tables/cell_table"); g = zarr.open_group(f"{p}/tables/cell_table").attrs
        res["anndata read_zarr tables/cell_table"] = (f"uns spatialdata_attrs {a.uns['spatialdata_attrs']}, "
                                                      f"encoding {g['spatialdata-encoding-type']}, region dtype {a.obs['region'].dtype}")
        if kind == "in-place":
            import steinbock.io as io
            files = io.list_data_files(work / f"sb{v}" / "intensities")
            df = io.read_data(files[0])
            res["steinbock reads --steinbock"] = f"{len(files)} image ({files[0].name}), {len(df)} cells, regionprops {list(io.read_data(work / f'sb{v}' / 'regionprops' / files[0].name).columns)[:5]}"
        if importlib.util.find_spec("ngff_zarr"):
            import ngff_zarr
            try:
                root = zarr.open_group(p).attrs.asdict()
                ngff_zarr.validate(root, version=v, model="image", strict=True)
                lab = zarr.open_group(f"{p}/labels/cells").attrs.asdict()
                ngff_zarr.validate(lab, version=v, model="label", strict=False)
                res["ngff-zarr (image strict, label)"] = "pass"
            except Exception as e: res["ngff-zarr (image strict, label)"] = f"FAIL {e!r}"[:300]
        rows[f"{kind} NGFF {v}"] = res
print(json.dumps(rows, indent=1))
