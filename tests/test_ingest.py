"""Ingest: good files land, each bad one fails alone with a one-line reason, nothing half-written."""

import io
import zipfile

import numpy as np
import pydicom
import pydicom.encaps
import pytest
from PIL import Image

from engine.cases.ingest import ingest_files
from engine.config import Config, Limits
from engine.context import Context
from engine.io.sniff import detect_format
from engine.stored import get_case, load_image
from tests.conftest import dicom_bytes, needs_data, store_snapshot


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _with_tsyntax(name: str, uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(name)))
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


BAD_INPUTS = {
    "empty.dcm": (b"", "UnsupportedFormat"),
    "notes.png": (b"patient notes, not an image\n" * 20, "UnsupportedFormat"),
    "truncated.dcm": (dicom_bytes("CT_small.dcm")[:20_000], "TruncatedPixelData"),
    "truncated.png": (_png(np.zeros((300, 300), np.uint8) + 7)[:200], "UnreadableStudy"),
    "report.dcm": (dicom_bytes("reportsi.dcm"), "NotAnImage"),
    "mpeg.dcm": (_with_tsyntax("CT_small.dcm", "1.2.840.10008.1.2.4.100"), "UnsupportedTransferSyntax"),
}


def test_batch_lands_good_files_and_reports_each_bad_one(ctx, config, store):
    good = [("chest.dcm", dicom_bytes("RG1_UNCR.dcm")), ("mr.dcm", dicom_bytes("MR_small.dcm")),
            ("ramp.png", _png(np.arange(256, dtype=np.uint8).reshape(16, 16)))]
    bad = [(name, data) for name, (data, _) in BAD_INPUTS.items()]
    results = ingest_files(good[:2] + bad + good[2:], ctx)
    by_file = {r.file: r for r in results}
    assert [by_file[n].status for n, _ in good] == ["ok"] * 3
    for name, (_, error_class) in BAD_INPUTS.items():
        assert by_file[name].status == "error"
        assert by_file[name].error.startswith(error_class + ":"), by_file[name].error
        assert "\n" not in by_file[name].error and by_file[name].case_id is None
    (cases, images), files = store_snapshot(config)
    assert (cases, images) == (3, 3) and len([f for f in files if f.endswith((".dcm", ".png"))]) == 3
    assert not [f for f in files if f.endswith(".tmp")]


def test_a_failed_file_writes_nothing(ctx, config, store):
    before = store_snapshot(config)
    for name, (data, _) in BAD_INPUTS.items():
        assert ingest_files([(name, data)], ctx)[0].status == "error"
    assert store_snapshot(config) == before


def test_a_full_disk_fails_each_file_that_does_not_fit_and_keeps_the_ones_that_landed(ctx, config, store, small_disk):
    small_disk(config.files_dir, "1m")  # a real filesystem with room for about three of these films
    noise = np.random.default_rng(0)
    batch = [(f"film{i}.png", _png(noise.integers(0, 256, (512, 512), dtype=np.uint8))) for i in range(8)]
    results = ingest_files(batch, ctx)

    landed = [r for r in results if r.status == "ok"]
    failed = [r for r in results if r.status == "error"]
    assert 1 <= len(landed) < len(batch) and len(landed) + len(failed) == len(batch)
    assert {r.error for r in failed} == {f"DiskFull: the disk holding {config.home} is full; free space and upload "
                                         "this file again"}
    (counts, files) = store_snapshot(config)
    assert counts == (len(landed), len(landed))  # one case and one image row per landed film, none for the rest
    assert not any(name.endswith(".tmp") for name in files)  # no half-written file
    for result, (_, data) in zip(results, batch):
        if result.status == "ok":  # what landed reads back whole
            image = get_case(store, result.case_id)["images"][0]
            assert np.array_equal(load_image(config, image).frames[0], np.asarray(Image.open(io.BytesIO(data))))

    small_disk(config.files_dir, "16m")  # space freed: the failed files upload now, none is a duplicate
    retried = ingest_files([item for item, r in zip(batch, results) if r.status == "error"], ctx)
    assert [r.status for r in retried] == ["ok"] * len(failed)


def test_same_file_twice_is_one_image_and_same_study_is_one_case(ctx, config, store):
    first = ingest_files([("a.dcm", dicom_bytes("MR_small.dcm"))], ctx)[0]
    again = ingest_files([("b.dcm", dicom_bytes("MR_small.dcm"))], ctx)[0]
    assert again.status == "duplicate" and (again.case_id, again.image_id) == (first.case_id, first.image_id)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("MR_small.dcm")))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # another image of the same study
    buffer = io.BytesIO()
    ds.save_as(buffer)
    other = ingest_files([("c.dcm", buffer.getvalue())], ctx)[0]
    assert other.status == "ok" and other.case_id == first.case_id and other.image_id != first.image_id
    assert get_case(store, first.case_id)["image_count"] == 2


def test_zip_of_a_folder_with_unsafe_members(ctx, config, store):
    archive = _zip({
        "study/CT.dcm": dicom_bytes("CT_small.dcm"),
        "study/series2/IM0001": dicom_bytes("MR_small.dcm"),  # DICOM without extension
        "../../etc/evil.dcm": dicom_bytes("MR_small_RLE.dcm"),
        "inner.zip": _zip({"x.dcm": dicom_bytes("CT_small.dcm")}),
        "__MACOSX/._CT.dcm": b"resource fork",
        "study/broken.jpg": b"\xff\xd8\xff\xe0 not really",
    })
    results = {r.file: r for r in ingest_files([("folder.zip", archive)], ctx)}
    assert results["folder.zip/study/CT.dcm"].status == "ok"
    assert results["folder.zip/study/series2/IM0001"].status == "ok"
    assert results["folder.zip/../../etc/evil.dcm"].error.startswith("UnsafeArchive")
    assert results["folder.zip/inner.zip"].error.startswith("UnsafeArchive")
    assert results["folder.zip/study/broken.jpg"].error.startswith("UnreadableStudy")
    assert not any("MACOSX" in name for name in results)


def test_zip_bomb_is_refused_without_expanding_it(tmp_path, store):
    config = Config(home=store.path.parent, data_dir=None, limits=Limits(max_upload_mb=8))
    bomb = _zip({"bomb.dcm": b"\0" * (64 << 20)})  # 64 MiB of zeros, ~64 KiB compressed
    result = ingest_files([("bomb.zip", bomb)], Context.open(config))
    assert len(result) == 1 and result[0].error.startswith("UnsafeArchive")


@pytest.mark.parametrize("limits, data, error", [
    (Limits(max_pixels=10_000), dicom_bytes("RG1_UNCR.dcm"), "TooLarge"),
    (Limits(max_frames=5), dicom_bytes("emri_small.dcm"), "TooLarge"),
    (Limits(max_pixels=1_000), _png(np.zeros((100, 100), np.uint8)), "TooLarge"),
    (Limits(max_upload_mb=1), dicom_bytes("RG1_UNCR.dcm"), "TooLarge"),
])
def test_configured_limits_refuse_before_decoding(tmp_path, limits, data, error):
    config = Config(home=tmp_path, data_dir=None, limits=limits)
    result = ingest_files([("x", data)], Context.open(config))[0]
    assert result.error.startswith(error) and "limit" in result.error


def test_pillow_decompression_bomb_becomes_an_error(tmp_path):
    config = Config(home=tmp_path, data_dir=None, limits=Limits(max_pixels=50_000_000))
    huge = Image.new("1", (20_000, 20_000))  # 400 MP, a few KB as PNG
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    assert ingest_files([("bomb.png", buffer.getvalue())], Context.open(config))[0].error.startswith("TooLarge")


def test_preamble_less_dicom_is_read(ctx, config, store):
    data = dicom_bytes("CT_small.dcm")[128:]  # drop the preamble but not the meta header
    data = data[4:]  # and the 'DICM' prefix
    assert detect_format(data) == "dicom"
    assert ingest_files([("bare", data)], ctx)[0].status == "ok"


def test_stored_image_reads_back_identically(ctx, config, store):
    result = ingest_files([("rg1.dcm", dicom_bytes("RG1_UNCR.dcm"))], ctx)[0]
    image = get_case(store, result.case_id)["images"][0]
    assert image["modality"] == "CR" and image["photometric"] == "MONOCHROME1"
    assert image["rows"] == 1955 and image["cols"] == 1841
    original = pydicom.dcmread(io.BytesIO(dicom_bytes("RG1_UNCR.dcm"))).pixel_array
    assert np.array_equal(load_image(config, image).frames[0], original)
    assert "/" not in image["path"].split("files/")[-1].split("/", 1)[-1]  # generated flat name


def test_every_action_is_audited(ctx, config, store):
    ingest_files([("a", dicom_bytes("MR_small.dcm")), ("b", b"")], ctx)
    actions = [row["action"] for row in store.audit_rows()]
    assert "upload" in actions and "upload.failed" in actions
    assert all(row["actor"] == config.user for row in store.audit_rows())


@needs_data
def test_demo_seed_lands_every_study_once_and_names_the_chest_films_and_heads(ctx, config, store):
    from engine.cases.demo import seed_demo
    from engine.cases.worklist import WorklistQuery, query_worklist

    results = seed_demo(ctx)
    assert len(results) == 25 and all(r.status == "ok" for r in results)
    assert seed_demo(ctx) == []  # a second start adds nothing
    chest = query_worklist(store, WorklistQuery(body_parts=("CHEST",), text="pediatric"))
    assert chest.total == 12 and all(r["modality"] == "OT" for r in chest.rows)
    heads = query_worklist(store, WorklistQuery(body_parts=("HEAD",), text="fetal"))
    assert heads.total == 4 and all(r["modality"] == "US" for r in heads.rows)
    glands = query_worklist(store, WorklistQuery(body_parts=("ADRENAL",), text="AdrenalMNIST3D"))
    assert glands.total == 3
    with store.read() as db:  # each a 64-slice volume (one multi-frame DICOM)
        frames = [r[0] for r in db.execute("SELECT frames FROM images WHERE body_part = 'ADRENAL'")]
    assert frames == [64, 64, 64]
