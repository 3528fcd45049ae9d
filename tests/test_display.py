"""The display pipeline against pydicom's own results on real files, pixel-exact where pydicom is the reference."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
)

from engine.config import Limits
from engine.errors import FrameOutOfRange
from engine.io import read_study, render
from engine.io.display import presets
from engine.io.study import Window
from tests.conftest import dicom_bytes, dicom_path


def _pydicom_reference(name: str, frame: int = 0) -> np.ndarray:
    """pydicom's Modality LUT + VOI, scaled to 8-bit by the VOI output range, MONOCHROME1 inverted."""
    ds = pydicom.dcmread(dicom_path(name))
    arr = ds.pixel_array
    arr = arr[frame] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr
    out = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    if "VOILUTSequence" in ds:
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
        lo, hi = lut.min(), lut.max()
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
    unit = (out.astype(float) - lo) / (hi - lo)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1 - unit
    return np.clip(np.round(unit * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "MR_small.dcm", "693_UNCR.dcm", "vlut_04.dcm", "RG3_UNCR.dcm"])
def test_file_window_matches_pydicom_pixel_exact(name):
    rendered = render(read_study(dicom_bytes(name)))
    assert np.array_equal(rendered.image, _pydicom_reference(name))


def test_rg1_monochrome1_shows_bright_bones_on_dark_background():
    study = read_study(dicom_bytes("RG1_UNCR.dcm"))
    rendered = render(study)
    assert study.photometric == "MONOCHROME1" and "MONOCHROME1 inverted" in rendered.steps
    image = rendered.image.astype(float)
    air = np.concatenate([image[80:200, 20:150].ravel(), image[80:200, -140:-20].ravel()])  # above the shoulders
    lung = image[700:900, 400:600]
    spine = image[600:1400, 880:960]
    assert air.mean() < 90 < lung.mean() < spine.mean() and spine.mean() > 200


@pytest.mark.parametrize("compressed, reference", [
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # JPEG 2000 lossless
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # JPEG-LS, multi-frame
    ("emri_small_RLE.dcm", "emri_small.dcm"),  # RLE
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("emri_small_big_endian.dcm", "emri_small.dcm"),  # explicit VR big endian
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # signed 16-bit
    ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),  # palette colour, RLE
    ("SC_rgb_rle_16bit.dcm", "SC_rgb_16bit.dcm"),
])
def test_lossless_syntaxes_decode_to_the_same_pixels(compressed, reference):
    a, b = read_study(dicom_bytes(compressed)), read_study(dicom_bytes(reference))
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(render(a).image, render(b).image)


def test_jpeg_baseline_ybr_multiframe_is_converted_to_rgb():
    study = read_study(dicom_bytes("color3d_jpeg_baseline.dcm"))
    assert study.n_frames == 120 and study.is_color
    assert "YBR_FULL_422 -> RGB" in render(study, frame=119).steps
    reference = pydicom.dcmread(dicom_path("color3d_jpeg_baseline.dcm")).pixel_array[119]
    assert np.array_equal(render(study, frame=119).image, reference)


def test_palette_colour_matches_pydicom_lut():
    ds = pydicom.dcmread(dicom_path("OBXXXX1A.dcm"))
    expected = apply_color_lut(ds.pixel_array, ds)
    study = read_study(dicom_bytes("OBXXXX1A.dcm"))
    assert np.array_equal(study.frames[0], expected)
    assert render(study).image.dtype == np.uint8 and "Palette colour LUT -> RGB" in render(study).steps


def test_multiframe_frames_are_addressable_and_bounded():
    study = read_study(dicom_bytes("emri_small.dcm"))
    reference = pydicom.dcmread(dicom_path("emri_small.dcm")).pixel_array
    assert study.n_frames == 10
    assert np.array_equal(study.frames[7], reference[7])
    with pytest.raises(FrameOutOfRange):
        render(study, frame=10)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_user_window_follows_each_voi_function_like_pydicom(function):
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, function
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
    expected = np.round((apply_windowing(hu, ds) - lo) / (hi - lo) * 255).astype(np.uint8)
    rendered = render(read_study(dicom_bytes("CT_small.dcm")), window=Window(40, 400, function))
    assert np.array_equal(rendered.image, expected)
    assert any(function in step for step in rendered.steps)


def test_several_file_windows_and_ct_presets_are_offered():
    study = read_study(dicom_bytes("693_UNCR.dcm"))
    names = [w.name for w in presets(study)]
    assert {"Lung", "Mediastinum", "Bone", "Brain", "Pixel range"} <= set(names)
    assert "Modality LUT: rescale x1 -1024" in study.read_steps  # CT values are HU
    assert study.frames.min() < -900  # air in HU


def test_modality_lut_sequence_is_applied():
    study = read_study(dicom_bytes("mlut_18.dcm"))
    ds = pydicom.dcmread(dicom_path("mlut_18.dcm"))
    assert "Modality LUT sequence" in study.read_steps
    assert np.array_equal(study.frames[0], apply_modality_lut(ds.pixel_array, ds))


def test_16bit_png_displays_its_full_range():
    ramp = np.tile(np.linspace(1000, 60000, 256).astype(np.uint16), (64, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    study = read_study(buffer.getvalue())
    assert study.frames.dtype == np.uint16 and study.frames.max() == 60000  # not truncated to 8 bits
    image = render(study).image
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) == 256


@pytest.mark.parametrize("spacing", [None, [0, 0], ["0.0", "0.0"]])
def test_zero_or_missing_spacing_is_unknown(spacing):
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    del ds.PixelSpacing
    if spacing is not None:
        ds.PixelSpacing = spacing
    buffer = io.BytesIO()
    ds.save_as(buffer)
    study = read_study(buffer.getvalue(), Limits())
    assert not study.spacing.known and "pixels" in study.spacing.describe()


def test_spacing_from_pixel_spacing_and_ultrasound_regions():
    assert read_study(dicom_bytes("CT_small.dcm")).spacing.source == "PixelSpacing"
    ds = pydicom.dcmread(dicom_path("emri_small.dcm"))
    assert read_study(dicom_bytes("emri_small.dcm")).spacing.source == "unknown"  # it has none
    measures, group = pydicom.Dataset(), pydicom.Dataset()
    measures.PixelSpacing = [0.5, 0.25]
    group.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [group]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    enhanced = read_study(buffer.getvalue()).spacing
    assert (enhanced.source, enhanced.row_mm, enhanced.col_mm) == ("PixelMeasuresSequence", 0.5, 0.25)
    us = read_study(dicom_bytes("OBXXXX1A.dcm")).spacing
    assert us.source == "UltrasoundRegions" and 0.1 < us.row_mm < 1
