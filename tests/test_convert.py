"""Tests of tiled_seg.io.convert and the ``tiled-seg convert`` verb."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from conftest import DATA, requires_data

from tiled_seg._cli import main
from tiled_seg.errors import (
    AxesError,
    ChannelError,
    InputFormatError,
    InputNotFoundError,
    OutputExistsError,
    PixelSizeError,
)
from tiled_seg.io import _imc
from tiled_seg.io._imc import imc_channel_names
from tiled_seg.io._tiff import open_tiff
from tiled_seg.io.convert import convert
from tiled_seg.io.ngff import open_slide

MIBI = "mibi_tnbc_fov8/fov8_mibitiff_22ch.tiff"
IMC_TXT = "imc_txt/ROI_001_1.txt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stack(shape=(3, 40, 30), dtype=np.uint16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(dtype)


def _write_mibi(path: Path, image: np.ndarray, names: list[str], fov_um: float | None) -> None:
    """A small MIBItiff: one page per channel, PageName tags, JSON description."""
    description = {"mibi.run": "test", "channel.target": names[0]}
    if fov_um is not None:
        description["mibi.size"] = fov_um
    with tifffile.TiffWriter(path) as tif:
        for plane, name in zip(image, names):
            tif.write(
                plane, photometric="minisblack", software="IonpathMIBIv1.0",
                description=json.dumps(description), metadata=None,
                extratags=[(285, "s", 0, name, True)],
            )


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_tiff_names_pixel_size_values(tmp_path, version):
    image = _stack()
    source = tmp_path / "in.ome.tiff"
    tifffile.imwrite(source, image, metadata={
        "axes": "CYX", "Channel": {"Name": ["DNA", "CD3", "CD20"]},
        "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm",
    })
    out = tmp_path / "out.ome.zarr"
    assert convert(source, out, ngff_version=version) == [str(out)]
    slide = open_slide(out)
    assert slide.ngff_version == version
    assert slide.channel_names == ("DNA", "CD3", "CD20")
    assert slide.pixel_size_um == pytest.approx(0.5)
    assert slide.data.dtype == image.dtype
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_ome_tiff_nanometre_pixel_size_and_explicit_override(tmp_path):
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, _stack(), metadata={
        "axes": "CYX", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm",
    })
    convert(source, tmp_path / "a.ome.zarr")
    assert open_slide(tmp_path / "a.ome.zarr").pixel_size_um == pytest.approx(0.25)
    convert(source, tmp_path / "b.ome.zarr", pixel_size_um=0.7, channel_names=["x", "y", "z"])
    slide = open_slide(tmp_path / "b.ome.zarr")
    assert slide.pixel_size_um == pytest.approx(0.7)
    assert slide.channel_names == ("x", "y", "z")


def test_ome_tiff_singleton_t_and_z_are_dropped(tmp_path):
    image = _stack((1, 2, 1, 20, 16))
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, image, metadata={"axes": "TCZYX"})
    convert(source, tmp_path / "out.ome.zarr")
    np.testing.assert_array_equal(open_slide(tmp_path / "out.ome.zarr").data.compute(), image[0, :, 0])


def test_ome_tiff_z_stack_is_refused(tmp_path):
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, _stack((2, 3, 20, 16)), metadata={"axes": "CZYX"})
    with pytest.raises(AxesError, match="Save one plane per file"):
        convert(source, tmp_path / "out.ome.zarr")
    assert _files(tmp_path) == ["in.ome.tif"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_plain_multipage_tiff(tmp_path, dtype):
    image = _stack((4, 50, 45), dtype=dtype)
    source = tmp_path / "pages.tif"
    with tifffile.TiffWriter(source) as tif:
        for plane in image:
            tif.write(plane, metadata=None)
    out = tmp_path / "out.ome.zarr"
    convert(source, out, pixel_size_um=1.0, chunk_px=32)
    slide = open_slide(out)
    assert slide.channel_names == tuple(f"channel_{i}" for i in range(4))
    assert slide.pixel_size_um == 1.0
    assert slide.chunk_yx == (32, 32)
    assert slide.data.dtype == dtype
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_plain_3d_array_and_single_page(tmp_path):
    image = _stack((3, 20, 16))
    tifffile.imwrite(tmp_path / "stack.tiff", image)
    convert(tmp_path / "stack.tiff", tmp_path / "a.ome.zarr", channel_names="a b c".split())
    slide = open_slide(tmp_path / "a.ome.zarr")
    assert slide.channel_names == ("a", "b", "c")
    assert slide.pixel_size_um is None
    np.testing.assert_array_equal(slide.data.compute(), image)

    tifffile.imwrite(tmp_path / "one.tif", image[1])
    convert(tmp_path / "one.tif", tmp_path / "b.ome.zarr")
    np.testing.assert_array_equal(open_slide(tmp_path / "b.ome.zarr").data.compute(), image[1:2])


def test_rgb_samples_become_channels(tmp_path):
    image = _stack((20, 16, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", image, photometric="rgb")
    convert(tmp_path / "rgb.tif", tmp_path / "out.ome.zarr")
    np.testing.assert_array_equal(
        open_slide(tmp_path / "out.ome.zarr").data.compute(), image.transpose(2, 0, 1)
    )


def test_tiff_is_read_lazily_page_by_page(tmp_path):
    source = tmp_path / "pages.tif"
    tifffile.imwrite(source, _stack((3, 40, 30)), metadata=None)
    with open_tiff(source) as image:
        assert image.data.chunksize[0] == 1
        assert image.data.npartitions >= 3


def test_synthetic_mibitiff(tmp_path):
    image = _stack((3, 64, 64))
    names = ["HH3 (89)", "CD45 (169)", "Membrane (200)"]
    source = tmp_path / "fov.tiff"
    _write_mibi(source, image, names, fov_um=32.0)
    convert(source, tmp_path / "out.ome.zarr")
    slide = open_slide(tmp_path / "out.ome.zarr")
    assert slide.channel_names == tuple(names)
    assert slide.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(slide.data.compute(), image)


def test_mibitiff_without_size_needs_the_pixel_size(tmp_path):
    source = tmp_path / "fov.tiff"
    _write_mibi(source, _stack((2, 32, 32)), ["a (1)", "b (2)"], fov_um=None)
    convert(source, tmp_path / "a.ome.zarr")
    assert open_slide(tmp_path / "a.ome.zarr").pixel_size_um is None
    convert(source, tmp_path / "b.ome.zarr", pixel_size_um=0.39)
    assert open_slide(tmp_path / "b.ome.zarr").pixel_size_um == pytest.approx(0.39)


@pytest.mark.slow
@requires_data(MIBI)
def test_real_mibitiff(tmp_path):
    source = DATA / MIBI
    before = _sha256(source)
    out = tmp_path / "fov8.ome.zarr"
    convert(source, out)
    slide = open_slide(out)
    with tifffile.TiffFile(source) as tif:
        page_names = tuple(page.tags["PageName"].value for page in tif.pages)
        expected = tif.asarray()
    assert len(page_names) == 22
    assert slide.channel_names == page_names
    assert slide.data.dtype == expected.dtype == np.uint16
    np.testing.assert_array_equal(slide.data.compute(), expected)
    # 400 um field of view over 1024 px.
    assert slide.pixel_size_um == pytest.approx(400 / 1024)
    # Default 512 px chunks: levels down to the chunk size.
    assert [level.shape for level in slide.levels] == [(22, 1024, 1024), (22, 512, 512)]
    assert slide.chunk_yx == (512, 512)
    assert _sha256(source) == before


@requires_data(IMC_TXT)
def test_real_imc_txt(tmp_path):
    source = DATA / IMC_TXT
    before = _sha256(source)
    out = tmp_path / "roi.ome.zarr"
    convert(source, out)
    slide = open_slide(out)
    table = pd.read_csv(source, sep="\t")
    channels = list(table.columns[6:])
    assert len(channels) == 5
    assert slide.data.shape == (5, 87, 103)
    assert slide.data.dtype == np.float32
    assert slide.pixel_size_um == 1.0
    assert slide.channel_names == ("Ag107", "Cytoker_651", "Laminin_681", "YBX1_2987", "H3K27Ac_1977")
    values = slide.data.compute()
    for index, column in enumerate(channels):
        expected = np.zeros((87, 103), np.float32)
        expected[table["Y"], table["X"]] = table[column].to_numpy(np.float32)
        np.testing.assert_array_equal(values[index], expected)
    omero = zarr.open_group(str(out)).attrs["ome"]["omero"]["channels"]
    assert [c["metal_tag"] for c in omero] == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]
    assert omero[1]["imc_label"] == "Cytoker_651((3356))Pr141"
    assert _sha256(source) == before


def test_imc_channel_names():
    assert imc_channel_names(
        ["CD3(Er170)", "DNA1_191Ir", "Histone H3((123))Yb176", "", "CD3"],
        ["Er170", "Ir191", "Yb176", "Gd160", "Er168"],
    ) == ["CD3(Er170)", "DNA1", "Histone H3", "Gd160", "CD3"]
    assert imc_channel_names(["CD3", "CD3"], ["Er170", "Er168"]) == ["CD3_Er170", "CD3_Er168"]


class _FakeMCD:
    """Stands in for readimc.MCDFile (no .mcd sample is available here)."""

    images: dict[int, np.ndarray] = {}
    broken: set[int] = set()

    def __init__(self, path):
        acquisitions = [
            SimpleNamespace(
                id=i, description=f"ROI_{i}", channel_labels=["CD3_1((2))Er170", "DNA1((3))Ir191"],
                channel_names=["Er170", "Ir191"], pixel_size_x_um=None if i == 1 else 0.8,
            )
            for i in sorted(self.images)
        ]
        self.slides = [SimpleNamespace(acquisitions=acquisitions)]

    def open(self):
        pass

    def close(self):
        pass

    def read_acquisition(self, acquisition):
        if acquisition.id in self.broken:
            raise OSError("corrupted acquisition")
        return self.images[acquisition.id]


@pytest.fixture
def fake_mcd(monkeypatch):
    _FakeMCD.images = {1: _stack((2, 30, 20), np.float32, 1), 2: _stack((2, 25, 35), np.float32, 2)}
    _FakeMCD.broken = set()
    monkeypatch.setattr(_imc, "_readimc", lambda: SimpleNamespace(MCDFile=_FakeMCD))
    return _FakeMCD


def test_mcd_one_store_per_acquisition(tmp_path, fake_mcd):
    source = tmp_path / "slide.mcd"
    source.write_bytes(b"mcd")
    out = tmp_path / "slide_out"
    written = convert(source, out)
    assert written == [str(out / "slide_001.ome.zarr"), str(out / "slide_002.ome.zarr")]
    for path, (acq_id, image), size in zip(written, fake_mcd.images.items(), [1.0, 0.8]):
        slide = open_slide(path)
        assert slide.channel_names == ("CD3_1", "DNA1")
        assert slide.pixel_size_um == pytest.approx(size)
        np.testing.assert_array_equal(slide.data.compute(), image)


def test_mcd_failure_leaves_nothing(tmp_path, fake_mcd):
    fake_mcd.broken = {2}
    source = tmp_path / "slide.mcd"
    source.write_bytes(b"mcd")
    with pytest.raises(InputFormatError, match="acquisition 2"):
        convert(source, tmp_path / "out")
    assert _files(tmp_path) == ["slide.mcd"]


def test_error_missing_input(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        convert(tmp_path / "nothing.tiff", tmp_path / "out.ome.zarr")
    assert _files(tmp_path) == []


def test_error_unsupported_extension(tmp_path):
    source = tmp_path / "image.png"
    source.write_bytes(b"\x89PNG")
    with pytest.raises(InputFormatError, match=r"unsupported extension '.png'.*OME-TIFF"):
        convert(source, tmp_path / "out.ome.zarr")
    assert _files(tmp_path) == ["image.png"]


def test_error_pages_of_different_shapes(tmp_path):
    source = tmp_path / "ragged.tif"
    tifffile.imwrite(source, _stack((20, 16)))
    tifffile.imwrite(source, _stack((20, 17)), append=True)
    with pytest.raises(InputFormatError, match="same \\(Y, X\\) shape"):
        convert(source, tmp_path / "out.ome.zarr")
    assert _files(tmp_path) == ["ragged.tif"]


def test_error_not_a_tiff(tmp_path):
    source = tmp_path / "fake.tif"
    source.write_text("hello")
    with pytest.raises(InputFormatError, match="not a readable TIFF"):
        convert(source, tmp_path / "out.ome.zarr")


def test_error_not_an_imc_txt(tmp_path):
    source = tmp_path / "notes.txt"
    source.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputFormatError, match="not a readable IMC .txt"):
        convert(source, tmp_path / "out.ome.zarr")
    assert _files(tmp_path) == ["notes.txt"]


def test_channel_names_as_a_comma_separated_string(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _stack())
    convert(source, tmp_path / "out.ome.zarr", channel_names="DNA, CD3,CD20")
    assert open_slide(tmp_path / "out.ome.zarr").channel_names == ("DNA", "CD3", "CD20")


def test_error_channel_name_count(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _stack())
    with pytest.raises(ChannelError, match="2 channel names given for the 3 channels.*--channel-names"):
        convert(source, tmp_path / "out.ome.zarr", channel_names=["a", "b"])
    with pytest.raises(ChannelError, match="unique"):
        convert(source, tmp_path / "out.ome.zarr", channel_names=["a", "b", "a"])
    assert _files(tmp_path) == ["stack.tif"]


def test_error_implausible_pixel_size(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _stack())
    with pytest.raises(PixelSizeError, match="implausible"):
        convert(source, tmp_path / "out.ome.zarr", pixel_size_um=0.0)
    assert _files(tmp_path) == ["stack.tif"]


def test_error_output_exists_and_overwrite(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _stack())
    out = tmp_path / "out.ome.zarr"
    convert(source, out, channel_names=["a", "b", "c"])
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        convert(source, out)
    assert open_slide(out).channel_names == ("a", "b", "c")
    convert(source, out, overwrite=True)
    assert open_slide(out).channel_names == ("channel_0", "channel_1", "channel_2")
    assert _files(tmp_path) == sorted(["stack.tif", "out.ome.zarr", *_prefixed(out, tmp_path)])


def _prefixed(store: Path, root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in store.rglob("*")]


def test_failed_overwrite_keeps_the_old_output(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _stack())
    out = tmp_path / "out.ome.zarr"
    convert(source, out)
    with pytest.raises(ChannelError):
        convert(source, out, channel_names=["a"], overwrite=True)
    np.testing.assert_array_equal(open_slide(out).data.compute(), _stack())


def test_input_is_not_modified(tmp_path):
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, _stack(), metadata={"axes": "CYX"})
    before = _sha256(source)
    convert(source, tmp_path / "out.ome.zarr")
    assert _sha256(source) == before


def test_cli_convert(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _stack())
    out = tmp_path / "out.ome.zarr"
    runner = CliRunner()
    result = runner.invoke(main, [
        "convert", str(source), str(out), "--pixel-size-um", "0.5",
        "--channel-names", "DNA,CD3,CD20", "--chunk-px", "16", "--ngff-version", "0.4",
    ])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    slide = open_slide(out)
    assert (slide.channel_names, slide.pixel_size_um, slide.ngff_version) == (("DNA", "CD3", "CD20"), 0.5, "0.4")
    assert slide.chunk_yx == (16, 16)

    result = runner.invoke(main, ["convert", str(source), str(out)])
    assert result.exit_code == 2
    assert "Error:" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
