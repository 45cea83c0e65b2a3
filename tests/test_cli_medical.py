"""DICOM and NIfTI inputs: modality LUT, windowing, MONOCHROME1, multi-frame volumes, NIfTI
layout and affine, errors; maps of DICOM images checked against direct library calls."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import medical, tiny
from cli_support.tiny import run_cli

import torchattr as ta
from torchattr.cli._common import CommandError
from torchattr.cli._data import ImageError, Preprocess, open_images, parse_window

pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")


def _stored(seed: int, shape: tuple[int, ...] = (16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, size=shape).astype(np.uint16)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("dicom") / "images"
    files = {
        "plain": dict(stored=_stored(0), slope=2.0, intercept=-1024.0),
        "windowed": dict(stored=_stored(1), slope=1.0, intercept=-1000.0, window=(40, 400)),
        "inverted": dict(
            stored=_stored(2), slope=0.5, intercept=-100.0, window=(200, 300),
            photometric="MONOCHROME1",
        ),
    }  # fmt: skip
    for name, options in files.items():
        stored = options.pop("stored")
        medical.write_dicom(folder / f"{name}.dcm", stored, **options)
        options["stored"] = stored
    return {"folder": folder, "files": files}


def _modality(options: dict) -> np.ndarray:
    return options["stored"].astype(np.float64) * options["slope"] + options["intercept"]


def test_dicom_modality_lut_window_and_monochrome1(dicoms: dict) -> None:
    images = open_images(dicoms["folder"])
    files = dicoms["files"]
    assert images.names == ["inverted", "plain", "windowed"]
    assert all(images.sizes[n] == (16, 16) and images.channels[n] == 1 for n in images.names)
    # no window in the file: modality values (here Hounsfield-like units) as they are
    plain = images.load("plain")
    assert plain.shape == (1, 16, 16)
    np.testing.assert_allclose(plain[0].numpy(), _modality(files["plain"]), rtol=1e-6)
    # the file's window (DICOM LINEAR VOI function), to [0, 1]
    windowed = images.load("windowed")[0].numpy()
    expected = medical.linear_window(_modality(files["windowed"]), 40, 400)
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    assert 0 < expected.mean() < 1  # the window cuts inside the value range
    # MONOCHROME1: low values are shown white, so the windowed values are inverted
    inverted = images.load("inverted")[0].numpy()
    expected = 1 - medical.linear_window(_modality(files["inverted"]), 200, 300)
    np.testing.assert_allclose(inverted, expected, atol=1e-6)


def test_dicom_window_option_overrides_the_file(dicoms: dict) -> None:
    files = dicoms["files"]
    chosen = open_images(dicoms["folder"], window=(500, 1000)).load("windowed")[0].numpy()
    expected = medical.linear_window(_modality(files["windowed"]), 500, 1000)
    np.testing.assert_allclose(chosen, expected, atol=1e-6)
    raw = open_images(dicoms["folder"], window="none")
    np.testing.assert_allclose(
        raw.load("windowed")[0].numpy(), _modality(files["windowed"]), rtol=1e-6
    )
    # MONOCHROME1 without a window: negated, so that larger values are still brighter
    np.testing.assert_allclose(
        raw.load("inverted")[0].numpy(), -_modality(files["inverted"]), rtol=1e-6
    )
    assert parse_window("40,400") == (40.0, 400.0) and parse_window("NONE") == "none"
    with pytest.raises(Exception, match="CENTER,WIDTH"):
        parse_window("40")
    with pytest.raises(Exception, match="width > 0"):
        parse_window("40,0")


def test_multiframe_dicom_is_a_volume(tmp_path: Path) -> None:
    stored = _stored(3, (5, 12, 10))
    medical.write_dicom(tmp_path / "ct.dcm", stored, slope=1.0, intercept=-1024.0)
    images = open_images(tmp_path)
    assert images.sizes["ct"] == (5, 12, 10)
    volume = images.load("ct")
    assert volume.shape == (1, 5, 12, 10)
    np.testing.assert_allclose(volume[0].numpy(), stored.astype(np.float64) - 1024, rtol=1e-6)


def test_dicom_series_folder_is_a_volume_in_position_order(tmp_path: Path) -> None:
    """Slice files named against their order; positions along the normal of a tilted plane."""
    row, column = np.array([1.0, 0, 0]), np.array([0, np.cos(0.2), np.sin(0.2)])
    normal = np.cross(row, column)
    stored = [_stored(10 + z, (6, 7)) for z in range(4)]
    intercepts = [-1000.0, -1010.0, -1020.0, -1030.0]
    for z, name in enumerate(["d", "b", "c", "a"]):  # file order: a, b, c, d = z 3, 1, 2, 0
        medical.write_dicom(
            tmp_path / "data" / "ct" / f"{name}.dcm", stored[z], intercept=intercepts[z],
            window=(40, 400) if z == 0 else (0, 50),
            ImageOrientationPatient=[*row, *column],
            ImagePositionPatient=list(np.array([3.0, -2.0, 1.0]) + 2.5 * z * normal),
        )  # fmt: skip
    medical.write_dicom(tmp_path / "data" / "single.dcm", _stored(20, (6, 7)))
    images = open_images(tmp_path / "data")
    assert images.names == ["ct", "single"] and images.sizes["ct"] == (4, 6, 7)
    volume = images.load("ct")[0].numpy()
    for z in range(4):  # each slice's own rescale, the first slice's window for all
        modality = stored[z].astype(np.float64) + intercepts[z]
        np.testing.assert_allclose(volume[z], medical.linear_window(modality, 40, 400), atol=1e-6)
    (tmp_path / "data" / "ct" / "b.dcm").unlink()
    medical.write_dicom(tmp_path / "data" / "ct" / "b.dcm", _stored(30, (5, 7)))
    assert "different sizes" in open_images(tmp_path / "data").header_errors["ct"]


def test_nifti_layout_and_affine(tmp_path: Path) -> None:
    data = medical.write_nifti_volumes(tmp_path / "nii", count=1, gz=False)["vol_0"]
    images = open_images(tmp_path / "nii")
    assert images.names == ["vol_0"] and images.sizes["vol_0"] == (6, 8, 10)
    volume = images.load("vol_0")
    np.testing.assert_array_equal(volume[0].numpy(), data.transpose(2, 1, 0))
    affine, shape = images.nifti_space("vol_0")
    np.testing.assert_array_equal(affine, medical.AFFINE)
    assert shape == medical.SHAPE
    window = open_images(tmp_path / "nii", window=(200, 400)).load("vol_0")[0].numpy()
    expected = np.clip((data.transpose(2, 1, 0) - 200) / 400 + 0.5, 0, 1)
    np.testing.assert_allclose(window, expected, atol=1e-6)


def test_generate_on_dicom_matches_direct_calls(dicoms: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "generate", "cli_support.tiny:grey_factory", dicoms["folder"], "-m", "saliency",
        "--window", "0,2000", "--out", out, "--batch-size", "2",
    ]  # fmt: skip
    code, printed, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "saliency: 3/3 maps" in printed
    model = tiny.grey_factory()
    images = open_images(dicoms["folder"], window=(0.0, 2000.0))
    x = torch.stack([images.load(n) for n in images.names])
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    expected = ta.io.normalize_map(ta.saliency(model, x))
    for k, name in enumerate(images.names):
        saved = np.load(out / "saliency" / f"{name}.npy")
        np.testing.assert_allclose(saved, expected[k].numpy(), atol=1e-5)
    run = (out / "run.json").read_text()
    assert '"window": [' in run  # the window is part of the recorded preprocessing
    # another window, same folder: the maps were made from other pixels, so resume refuses
    argv[argv.index("0,2000")] = "40,400"
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "window" in err


def test_bad_medical_files_give_one_line_errors(dicoms: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.dcm").write_bytes(b"not a dicom file at all")
    medical.write_dicom(folder / "good.dcm", _stored(4))
    images = open_images(folder)
    assert images.sizes["broken"] is None and "broken" in images.header_errors
    code, _, err = run_cli(
        ["generate", "cli_support.tiny:grey_factory", folder, "-m", "saliency",
         "--out", tmp_path / "out"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "broken" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # a colour encoding the reader does not convert
    ybr = tmp_path / "ybr"
    medical.write_dicom(ybr / "x.dcm", _stored(5), photometric="YBR_FULL")
    with pytest.raises(ImageError, match="YBR_FULL is not supported"):
        open_images(ybr).load("x")
    # a 4-D NIfTI (a time series) is refused when its header is read
    series = tmp_path / "series"
    series.mkdir()
    nibabel.save(
        nibabel.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), series / "t.nii.gz"
    )
    assert "4-D" in open_images(series).header_errors["t"]
    # a single file as DATA
    with pytest.raises(CommandError, match="pass the folder"):
        open_images(dicoms["folder"] / "plain.dcm")


def test_missing_extra_names_it(dicoms: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(CommandError, match=r"torchattr\[medical\]"):
        open_images(dicoms["folder"])
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(CommandError, match=r"torchattr\[medical\]"):
        medical.write_nifti_volumes  # noqa: B018 - the writer itself is not under test
        from torchattr.cli._data.medical import nibabel_module

        nibabel_module()


def test_preprocess_of_volumes() -> None:
    volume = torch.rand(1, 3, 4, 5)
    pre = Preprocess(mean=(0.5,), std=(0.25,), grayscale_to_rgb=True)
    out = pre(volume)
    assert out.shape == (3, 3, 4, 5)
    torch.testing.assert_close(out, ((volume - 0.5) / 0.25).expand(3, -1, -1, -1))
    colour = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.25,))
    baseline = colour.baseline(0.0, 3, spatial=3)
    assert baseline.shape == (1, 3, 1, 1, 1)  # broadcasts against [B, C, D, H, W]
    torch.testing.assert_close(baseline.flatten(), torch.tensor([-2.0, -1.6, -1.2]))
    with pytest.raises(CommandError, match="--resize and --pad apply to 2-D images"):
        Preprocess(resize=(8, 8))(volume)
