"""Tests of tiled_seg.io.ngff: NGFF 0.4/0.5 images and labels."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr.writer import write_image as ome_write_image
from scipy import ndimage

from tiled_seg.errors import (
    AxesError,
    ChannelError,
    InputNotFoundError,
    NotNGFFError,
    OutputExistsError,
    PixelSizeError,
)
from tiled_seg.io.ngff import (
    list_labels,
    open_slide,
    pyramid_shapes,
    read_labels,
    write_image,
    write_label_images,
    write_label_pyramids,
    write_labels,
)

VERSIONS = ["0.4", "0.5"]
NAMES = ["DNA", "CD3", "PanKeratin"]


def _image(shape=(3, 600, 520), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def _labels(shape=(600, 520)) -> np.ndarray:
    labels = np.zeros(shape, np.uint32)
    labels[10:60, 20:90] = 1
    labels[100:250, 150:260] = 7
    labels[280:, :30] = 3
    labels[500:590, 400:515] = 12
    return labels


def _ome_store(path, data, version: str, scale_um: float = 0.25, omero: bool = True) -> None:
    """Write ``data`` (t, c, z, y, x) with ome-zarr-py's own writer."""
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    window = {"start": 0, "end": 100, "min": 0, "max": 65535}
    metadata = {}
    if omero:
        metadata["omero"] = {
            "channels": [{"label": n, "color": "FFFFFF", "window": window} for n in NAMES]
        }
    ome_write_image(
        data, group, scale_factors=(2,), fmt=fmt, axes="tczyx",
        scale={"t": 1.0, "c": 1.0, "z": 1.0, "y": scale_um, "x": scale_um},
        axes_units={"y": "micrometer", "x": "micrometer"}, **metadata,
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("as_dask", [False, True])
def test_image_round_trip(tmp_path, version, as_dask):
    image = _image()
    data = da.from_array(image, chunks=(1, 70, 90)) if as_dask else image
    path = tmp_path / "slide.ome.zarr"
    write_image(path, data, NAMES, 0.5, chunk_px=128, ngff_version=version)
    slide = open_slide(path)
    assert slide.ngff_version == version
    assert slide.channel_names == tuple(NAMES)
    assert slide.pixel_size_um == pytest.approx(0.5)
    assert slide.chunk_yx == (128, 128)
    assert slide.data.dtype == np.uint16
    np.testing.assert_array_equal(slide.data.compute(), image)
    expected = pyramid_shapes((600, 520), 128)
    assert len(expected) > 1
    assert [level.shape[1:] for level in slide.levels] == expected
    assert slide.level_factors == tuple(2.0**i for i in range(len(expected)))
    # Level 1 is the rounded (1/4, 1/2, 1/4) filter of level 0 at every other pixel.
    smooth = ndimage.correlate1d(image.astype(float), [0.25, 0.5, 0.25], axis=1, mode="nearest")
    smooth = ndimage.correlate1d(smooth, [0.25, 0.5, 0.25], axis=2, mode="nearest")
    np.testing.assert_array_equal(
        slide.levels[1].compute(), np.round(smooth[:, ::2, ::2]).astype(np.uint16)
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_our_image_read_by_ome_zarr_reader(tmp_path, version):
    image = _image()
    path = tmp_path / "slide.ome.zarr"
    write_image(path, image, NAMES, 0.5, chunk_px=128, ngff_version=version)
    node = list(Reader(parse_url(str(path)))())[0]
    assert node.metadata["channel_names"] == NAMES
    np.testing.assert_array_equal(np.asarray(node.data[0]), image)


def test_pyramid_shapes_stop_at_the_floor():
    assert pyramid_shapes((100, 90), 256) == [(100, 90)]
    assert pyramid_shapes((2048, 1025), 256) == [(2048, 1025), (1024, 513), (512, 257)]


def test_no_pixel_size_reads_back_as_none(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image((1, 40, 30)), ["a"], None)
    assert open_slide(path).pixel_size_um is None
    assert open_slide(path, pixel_size_um=0.8).pixel_size_um == 0.8


def test_channel_metadata_is_kept(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    extra = [{"metal_tag": "Pr141"}, {"metal_tag": "Nd142"}]
    write_image(path, _image((2, 40, 30)), ["a", "b"], 1.0, channel_metadata=extra)
    channels = zarr.open_group(str(path)).attrs["ome"]["omero"]["channels"]
    assert [c["metal_tag"] for c in channels] == ["Pr141", "Nd142"]
    assert [c["label"] for c in channels] == ["a", "b"]


@pytest.mark.parametrize("version", VERSIONS)
def test_tczyx_from_ome_zarr_writer(tmp_path, version):
    image = _image((1, 3, 1, 64, 48))
    path = tmp_path / "ome.zarr"
    _ome_store(path, image, version)
    slide = open_slide(path)
    assert slide.ngff_version == version
    assert slide.channel_names == tuple(NAMES)
    assert slide.pixel_size_um == pytest.approx(0.25)
    assert [level.shape for level in slide.levels] == [(3, 64, 48), (3, 32, 24)]
    np.testing.assert_array_equal(slide.data.compute(), image[0, :, 0])


def test_missing_channel_names_default(tmp_path):
    path = tmp_path / "ome.zarr"
    _ome_store(path, _image((1, 3, 1, 16, 16)), "0.5", omero=False)
    assert open_slide(path).channel_names == ("channel_0", "channel_1", "channel_2")


@pytest.mark.parametrize("version", VERSIONS)
def test_labels_round_trip_and_ome_zarr_reader(tmp_path, version):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image(), NAMES, 0.5, chunk_px=128, ngff_version=version)
    labels = _labels()
    write_labels(path, "cells", da.from_array(labels, chunks=50), 0.5, chunk_px=128)
    write_labels(path, "nuclei", labels, 0.5, chunk_px=128)
    assert list_labels(path) == ["cells", "nuclei"]
    np.testing.assert_array_equal(read_labels(path, "cells").compute(), labels)
    # Coarser levels take every other pixel: ids are never invented.
    level1 = read_labels(path, "cells", level=1).compute()
    np.testing.assert_array_equal(level1, labels[::2, ::2])

    group = zarr.open_group(str(path / "labels" / "cells"), mode="r")
    attrs = group.attrs.asdict()
    ome = attrs["ome"] if version == "0.5" else attrs
    assert ome["image-label"]["source"] == {"image": "../../"}
    assert len(ome["multiscales"][0]["datasets"]) == len(pyramid_shapes(labels.shape, 128))

    nodes = list(Reader(parse_url(str(path / "labels" / "cells")))())
    (cells,) = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)
                and str(n.zarr.path).rstrip("/").endswith("/cells")]
    np.testing.assert_array_equal(np.asarray(cells.data[0]), labels)
    np.testing.assert_array_equal(np.asarray(cells.data[1]), labels[::2, ::2])


def test_labels_overwrite(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image(), NAMES, 0.5)
    write_labels(path, "cells", _labels(), 0.5)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_labels(path, "cells", _labels(), 0.5)
    write_labels(path, "cells", np.ones((600, 520), np.uint8), 0.5, overwrite=True)
    assert read_labels(path, "cells").dtype == np.uint8
    assert list_labels(path) == ["cells"]


def test_read_missing_labels_names_present_ones(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image(), NAMES, 0.5)
    write_labels(path, "cells", _labels(), 0.5)
    with pytest.raises(InputNotFoundError, match="present: cells"):
        read_labels(path, "nuclei")


def test_error_missing_path(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        open_slide(tmp_path / "nothing.ome.zarr")


def test_error_plain_zarr_group(tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.open_group(str(path), mode="w")
    with pytest.raises(NotNGFFError, match="without OME-NGFF"):
        open_slide(path)


def test_error_bare_array(tmp_path):
    path = tmp_path / "bare.zarr"
    zarr.create_array(str(path), shape=(3, 8, 8), dtype="u2")
    with pytest.raises(NotNGFFError, match="bare zarr array"):
        open_slide(path)


def test_error_not_a_zarr(tmp_path):
    path = tmp_path / "image.tif"
    path.write_bytes(b"not a zarr")
    with pytest.raises(NotNGFFError, match="tiled-seg convert"):
        open_slide(path)


@pytest.mark.parametrize("shape, axis", [((2, 3, 1, 16, 16), "'t'"), ((1, 3, 4, 16, 16), "'z'")])
def test_error_several_t_or_z_planes(tmp_path, shape, axis):
    path = tmp_path / "stack.zarr"
    _ome_store(path, _image(shape), "0.5")
    with pytest.raises(AxesError, match=f"planes along {axis}"):
        open_slide(path)


def test_error_duplicated_channel_names(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image(), NAMES, 0.5)
    group = zarr.open_group(str(path), mode="a")
    ome = group.attrs["ome"]
    ome["omero"]["channels"][2]["label"] = "DNA"
    group.attrs["ome"] = ome
    with pytest.raises(ChannelError, match=r"\['DNA'\] more than once"):
        open_slide(path)


def test_error_implausible_pixel_size(tmp_path):
    path = tmp_path / "ome.zarr"
    _ome_store(path, _image((1, 3, 1, 16, 16)), "0.5", scale_um=1e-6)
    with pytest.raises(PixelSizeError, match="implausible"):
        open_slide(path)
    # An explicit value takes precedence over the store's and is checked too.
    assert open_slide(path, pixel_size_um=0.5).pixel_size_um == 0.5
    with pytest.raises(PixelSizeError, match="--pixel-size-um"):
        open_slide(path, pixel_size_um=5000.0)


def test_write_image_errors(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    with pytest.raises(ChannelError, match="one name per channel"):
        write_image(path, _image(), ["a", "b"], 0.5)
    with pytest.raises(ChannelError, match="unique"):
        write_image(path, _image(), ["a", "b", "a"], 0.5)
    with pytest.raises(PixelSizeError):
        write_image(path, _image(), NAMES, 0.0)
    with pytest.raises(AxesError, match=r"\(C, Y, X\)"):
        write_image(path, _image()[0], ["a"], 0.5)
    assert not path.exists()
    write_image(path, _image(), NAMES, 0.5)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_image(path, _image(), NAMES, 0.5)


def test_unknown_channel_lists_the_names(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image(), NAMES, 0.5)
    slide = open_slide(path)
    assert slide.channel_index("CD3") == 1
    with pytest.raises(ChannelError, match="DNA, CD3, PanKeratin"):
        slide.channel_index("CD8")


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_image_and_label_pyramids_align(tmp_path, version):
    """At every level, a label pixel and the image pixel at the same index sit at one place."""
    size, width = 1100, 1100
    yy, xx = np.mgrid[0:size, 0:width]
    # Image channels are the full-resolution coordinates; each label id encodes its pixel.
    image = np.stack([yy, xx]).astype(np.float32)
    labels = (yy * width + xx + 1).astype(np.uint32)
    path = tmp_path / "ramp.ome.zarr"
    write_image(path, image, ["y", "x"], 0.5, chunk_px=128, ngff_version=version)
    write_labels(path, "ramp", labels, 0.5, chunk_px=128)
    root = zarr.open_group(str(path), mode="r")
    image_ms = _ngff(root)["multiscales"][0]
    label_ms = _ngff(root["labels/ramp"])["multiscales"][0]
    assert len(image_ms["datasets"]) == len(label_ms["datasets"]) >= 3
    for level, (im, lb) in enumerate(zip(image_ms["datasets"], label_ms["datasets"])):
        # The same physical grid: equal scale (and translation) in y and x.
        assert im["coordinateTransformations"][0]["scale"][1:] == lb["coordinateTransformations"][0]["scale"]
        assert [t["type"] for t in im["coordinateTransformations"]] == [
            t["type"] for t in lb["coordinateTransformations"]]
        pixels = np.asarray(root[im["path"]])
        ids = np.asarray(root[f"labels/ramp/{lb['path']}"])
        assert pixels.shape[1:] == ids.shape
        y0, x0 = np.divmod(ids.astype(np.int64) - 1, width)
        inner = (slice(1, -2), slice(1, -2))  # the filter's edge replication aside
        np.testing.assert_allclose(pixels[0][inner], y0[inner], atol=1e-3)
        np.testing.assert_allclose(pixels[1][inner], x0[inner], atol=1e-3)
        assert np.all(y0[inner] == 2**level * np.arange(ids.shape[0])[inner[0], None])


def _ngff(group: zarr.Group) -> dict:
    attrs = group.attrs.asdict()
    return attrs.get("ome", attrs)


@pytest.mark.parametrize("version", VERSIONS)
def test_viewer_metadata(tmp_path, version):
    """omero windows from the data, distinct colours, a few channels on; multiscales type."""
    rng = np.random.default_rng(1)
    image = rng.poisson([[[5.0]], [[40.0]], [[1.0]], [[9.0]], [[2.0]]], size=(5, 600, 520)).astype(np.uint16)
    path = tmp_path / "v.ome.zarr"
    write_image(path, image, ["a", "b", "c", "d", "e"], 0.5, chunk_px=128, ngff_version=version)
    write_labels(path, "cells", (image[0] > 6).astype(np.uint32), 0.5, chunk_px=128)
    root = zarr.open_group(str(path), mode="r")
    channels = _ngff(root)["omero"]["channels"]
    ends = [c["window"]["end"] for c in channels]
    # The window ends near the 99.9th percentile of each channel, not the dtype's 65535.
    np.testing.assert_allclose(ends, np.percentile(image, 99.9, axis=(1, 2)), rtol=0.25)
    assert all(c["window"]["start"] < c["window"]["end"] <= c["window"]["max"] for c in channels)
    assert len({c["color"] for c in channels}) == len(channels)
    assert [c["active"] for c in channels] == [True, True, True, False, False]
    multiscale = _ngff(root)["multiscales"][0]
    assert multiscale["type"] and multiscale["metadata"]["method"] == "tiled_seg.io.ngff"
    image_label = _ngff(root["labels/cells"])["image-label"]
    assert "colors" not in image_label and image_label["source"] == {"image": "../../"}
    assert _ngff(root["labels/cells"])["multiscales"][0]["type"] == "nearest"


@pytest.mark.parametrize("version", VERSIONS)
def test_coarser_levels_written_with_the_full_resolution_where_its_blocks_cover_their_chunks(
    tmp_path, version, client
):
    path = tmp_path / "slide.ome.zarr"
    write_image(path, _image((1, 1024, 1024)), NAMES[:1], 0.5, chunk_px=64, ngff_version=version)
    cells = np.random.default_rng(1).integers(0, 50, (1024, 1024)).astype(np.uint32)
    # Blocks of 128 px hold whole 64 px chunks of level 1 (every 2nd pixel),
    # not of level 2: level 2 is left to write_label_pyramids, read from level 1.
    write_label_images(path, {"cells": da.from_array(cells, chunks=128)}, 0.5, chunk_px=64, pyramid=False)
    group = zarr.open_group(str(path / "labels" / "cells"), mode="r")
    assert sorted(group.array_keys()) == ["0", "1"]
    np.testing.assert_array_equal(group["1"][...], cells[::2, ::2])
    reports = []
    with client.as_current():
        write_label_pyramids(path, ["cells"], chunk_px=64, progress=lambda *report: reports.append(report))
    assert sorted(group.array_keys()) == ["0", "1", "2"]
    for level in range(3):
        np.testing.assert_array_equal(group[str(level)][...], cells[:: 2**level, :: 2**level])
    # Only the missing level is counted and written: 256 x 256 px in one block.
    assert reports[-1] == ("pyramid cells", 1, 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_label_images_written_together_equal_each_written_alone(tmp_path, version, client):
    together, alone = tmp_path / "together.ome.zarr", tmp_path / "alone.ome.zarr"
    cells = _labels()
    nuclei = np.where(cells % 3 == 0, cells, 0).astype(np.uint16)
    for path in (together, alone):
        write_image(path, _image(), NAMES, 0.5, chunk_px=128, ngff_version=version)
        write_labels(path, "old", cells, 0.5, chunk_px=128)
    reports = []
    with client.as_current():
        write_label_images(together, {"cells": da.from_array(cells, chunks=128), "nuclei": nuclei}, 0.5,
                           chunk_px=128, progress=lambda *report: reports.append(report), pyramid=False)
        # Blocks of one chunk cannot write the coarser level's chunks; the one
        # block of the numpy image writes every level.
        assert sorted(zarr.open_group(str(together / "labels" / "cells")).array_keys()) == ["0"]
        assert sorted(zarr.open_group(str(together / "labels" / "nuclei")).array_keys()) == ["0", "1"]
        write_label_pyramids(together, ["cells", "nuclei"], chunk_px=128,
                             progress=lambda *report: reports.append(report))
    write_labels(alone, "cells", cells, 0.5, chunk_px=128)
    write_labels(alone, "nuclei", nuclei, 0.5, chunk_px=128)
    assert list_labels(together) == list_labels(alone) == ["cells", "nuclei", "old"]
    for name in ("cells", "nuclei"):
        a = zarr.open_group(str(together / "labels" / name), mode="r")
        b = zarr.open_group(str(alone / "labels" / name), mode="r")
        assert a.attrs.asdict() == b.attrs.asdict()
        assert sorted(a.array_keys()) == sorted(b.array_keys())
        for key in a.array_keys():
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key][...], b[key][...])
    finals = {stage: (done, total) for stage, done, total in reports}
    assert set(finals) == {"write cells+nuclei", "pyramid cells+nuclei"}
    assert all(done == total > 0 for done, total in finals.values())
    # One name taken: nothing is replaced without overwrite.
    with pytest.raises(OutputExistsError, match="nuclei exists"):
        write_label_images(together, {"new": cells, "nuclei": cells}, 0.5, chunk_px=128)
    assert list_labels(together) == ["cells", "nuclei", "old"]
    np.testing.assert_array_equal(read_labels(together, "nuclei").compute(), nuclei)
