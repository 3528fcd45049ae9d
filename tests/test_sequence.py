"""The sequence task: volume readers, the sequence models, their training and card, and sequence cases."""

from __future__ import annotations

import gzip
import io
import json

import nibabel
import numpy as np
import pytest
import torch

from engine.cases.ingest import ingest_files, prepare_here
from engine.config import Limits
from engine.errors import JobError, NotAnalysed, TooLarge, UnreadableStudy, UnsupportedFormat
from engine.io.volume import read_volume
from engine.jobs.training import TrainConfig
from engine.models.preprocess import Preprocessing
from engine.models.registry import create_model, list_models
from engine.writers.wrap import volume_dicom
from tests.conftest import DATA_DIR, dicom_bytes, needs_data

KEY = bytes(range(32))
SHIPPED = "adrenal64-slice-rnn"


def _volume(seed: int = 0, shape=(12, 20, 16)) -> np.ndarray:
    """A 0/255 blob, like a shape mask, off-centre so every axis matters."""
    z, y, x = np.indices(shape)
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.3, 0.7, 3) * np.array(shape)
    return ((((z - c[0]) / 4) ** 2 + ((y - c[1]) / 6) ** 2 + ((x - c[2]) / 3) ** 2) < 1).astype(np.uint8) * 255


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """Only the header of an .npy file that claims `shape` (a hostile file: the voxels never come)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _nifti(volume: np.ndarray, zooms=(0.8, 0.7, 2.5), description: bytes = b"") -> bytes:
    image = nibabel.Nifti1Image(volume.transpose(2, 1, 0).copy(), np.diag([*zooms, 1.0]))
    image.header["descrip"] = description
    return image.to_bytes()


# --- models -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models("sequence"))
def test_every_sequence_model_classifies_a_small_volume(name):
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 6, 16, 16))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_the_rnn_reads_slice_order_and_its_attention_sums_to_one():
    torch.manual_seed(0)
    model = create_model("slice_rnn").eval()
    seen = []
    hook = model.attention.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        forward, backward = model(x), model(x.flip(2))
    hook.remove()
    assert seen[0].shape == (1, 8) and torch.allclose(seen[0].sum(1), torch.ones(1))
    assert not torch.allclose(forward, backward)  # a recurrent network: order changes the output
    mean = create_model("slice_mean").eval()
    with torch.no_grad():
        assert torch.allclose(mean(x), mean(x.flip(2)), atol=1e-5)  # the 2.5-D baseline: order does not


def test_volume_preprocessing_resamples_each_axis_and_round_trips_on_the_card():
    prep = Preprocessing(size=14, depth=6, mean=0.1, std=0.3)
    x = prep(_volume(shape=(12, 28, 28)))
    assert x.shape == (1, 1, 6, 14, 14)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert "depth" not in Preprocessing(size=64).to_dict()  # 2-D cards read as they always have
    with pytest.raises(ValueError, match="volume"):
        prep.resize_uint8(np.zeros((28, 28), np.uint8))


def test_depth_is_refused_for_a_2d_model():
    with pytest.raises(JobError, match="sequence models only"):
        TrainConfig(model="resnet18", depth=16).resolved()
    cfg = TrainConfig(dataset="adrenalmnist3d", model="slice_rnn").resolved()
    assert (cfg.size, cfg.depth) == (32, 32)


# --- readers ----------------------------------------------------------------------------------------------------


def test_npy_npz_nifti_and_multiframe_dicom_give_the_same_volume():
    volume = _volume()
    npz = io.BytesIO()
    np.savez_compressed(npz, volume=volume)
    sources = {"npy": _npy(volume), "npz": npz.getvalue(), "nifti": _nifti(volume),
               "nifti.gz": gzip.compress(_nifti(volume)), "dicom": volume_dicom(volume, (2.5, 0.7, 0.8), "test")}
    for name, data in sources.items():
        read = read_volume(data)
        assert np.array_equal(read.voxels, volume), name
    assert read_volume(sources["nifti"]).spacing_mm == pytest.approx((2.5, 0.7, 0.8))
    assert read_volume(sources["dicom"]).spacing_mm == pytest.approx((2.5, 0.7, 0.8))
    assert read_volume(_npy((volume > 0).astype(np.float32))).voxels.max() == 255  # a 0/1 mask shows as 0/255


def test_an_uploaded_nifti_is_stored_as_dicom_without_its_free_text_header():
    prepared = prepare_here(_nifti(_volume(), description=b"Jane Roe MRN 0012345"), KEY, Limits())
    assert prepared.extension == "dcm" and prepared.fields["frames"] == 12
    assert b"Roe" not in prepared.stored_bytes and b"0012345" not in prepared.stored_bytes
    assert np.array_equal(read_volume(prepared.stored_bytes).voxels, _volume())


@pytest.mark.parametrize("data, error, reason", [
    (_npy(np.zeros((4, 4), np.uint8)), UnreadableStudy, "three axes"),
    (_npy(np.array([{"a": 1}], dtype=object)), UnreadableStudy, ".npy"),
    (_npy(np.full((3, 4, 4), np.nan, np.float32)), UnreadableStudy, "NaN"),
    (gzip.compress(b"\0" * 20_000_000), TooLarge, "decompression bomb"),
    (_npy_header((100_000, 100_000, 1_000)), TooLarge, "exceeds the limit"),
    (b"not a volume at all", UnsupportedFormat, "not a volume"),
    (dicom_bytes("CT_small.dcm"), UnreadableStudy, "single-frame"),
])
def test_a_broken_or_hostile_volume_fails_with_a_one_line_reason(data, error, reason):
    with pytest.raises(error, match=reason) as raised:
        read_volume(data, Limits(max_pixels=1_000_000))
    assert "\n" not in str(raised.value)


# --- series of single-frame slices ------------------------------------------------------------------------------


def _slices(volume: np.ndarray, spacing: float = 2.0, series: str | None = None, z0: float = 0.0,
            positions: bool = True, first_number: int = 1) -> list[bytes]:
    """Each slice of `volume` as a single-frame DICOM of one series (axial, tilted so the normal is not z)."""
    from pydicom.uid import generate_uid

    from engine.writers.wrap import encoded, radiograph_dicom

    series, study = series or generate_uid(), generate_uid()
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(0.3), np.sin(0.3)])
    normal = np.cross(row, col)
    out = []
    for k, plane in enumerate(volume):
        ds = radiograph_dicom(plane, "slice", study_uid=study, Modality="CT", BodyPartExamined="ABDOMEN",
                              SeriesInstanceUID=series, InstanceNumber=k + first_number, PixelSpacing=[0.7, 0.8])
        if positions:
            ds.ImageOrientationPatient = [*row, *col]
            ds.ImagePositionPatient = [round(float(v), 4) for v in (z0 + k * spacing) * normal + [10, -20, 5]]
        out.append(encoded(ds))
    return out


def _studies(files: list[bytes]):
    from engine.io import read_study

    return [read_study(f) for f in files]


@pytest.mark.parametrize("positions", [True, False])
def test_shuffled_slices_of_one_series_stack_in_order(positions):
    from engine.io.series import assemble_series

    volume = _volume(seed=3)
    files = _slices(volume, positions=positions)
    shuffled = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    assembled = assemble_series(_studies(shuffled))
    assert np.array_equal(assembled.voxels, volume)
    if positions:
        assert assembled.spacing_mm == pytest.approx((2.0, 0.7, 0.8), abs=1e-3)
    else:
        assert assembled.spacing_mm is None  # ordered by instance number: the slice spacing is not known


def test_a_missing_slice_and_two_interleaved_series_are_refused_with_the_reason():
    from engine.io.series import assemble_series

    files = _slices(_volume(seed=4))
    with pytest.raises(UnreadableStudy, match="a slice is missing between positions"):
        assemble_series(_studies(files[:5] + files[6:]))
    numbered = _slices(_volume(seed=4), positions=False)
    with pytest.raises(UnreadableStudy, match="not 11 consecutive"):
        assemble_series(_studies(numbered[:5] + numbered[6:]))
    with pytest.raises(UnreadableStudy, match="2 series"):
        assemble_series(_studies(files + _slices(_volume(seed=5))))
    for offset, numbers, reason in ((0.0, 13, "same position"), (1.0, 1, "share instance number")):
        mixed = (_slices(_volume(seed=5), series="1.2.3.4", z0=offset, first_number=numbers)  # one Series UID,
                 + _slices(_volume(seed=6), series="1.2.3.4"))  # two series interleaved
        with pytest.raises(UnreadableStudy, match=reason):
            assemble_series(_studies(mixed))


def test_a_zip_of_ct_slices_is_one_sequence_case(ctx, store):
    import zipfile

    from engine.tasks.sequence import volume_of

    volume = _volume(seed=7)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for k, data in enumerate(_slices(volume)[::-1]):
            z.writestr(f"slice{k:02d}.dcm", data)
    results = ingest_files([("series.zip", archive.getvalue())], ctx)
    assert all(r.ok for r in results) and len({r.case_id for r in results}) == 1
    assembled = volume_of(ctx, store.row("images", results[0].image_id))
    assert np.array_equal(assembled.voxels, volume) and assembled.modality == "CT"


# --- training and the shipped model -----------------------------------------------------------------------------


def _adrenal_subset(folder, per_split=(("train", 16), ("val", 8), ("test", 8))):
    with np.load(DATA_DIR / "adrenalmnist3d" / "adrenalmnist3d.npz") as arrays:
        out = {}
        for split, n in per_split:
            labels = arrays[f"{split}_labels"].reshape(-1)
            pick = np.concatenate([np.flatnonzero(labels == 0)[: n // 2], np.flatnonzero(labels == 1)[: n // 2]])
            for kind in ("images", "labels"):
                out[f"{split}_{kind}"] = arrays[f"{split}_{kind}"][pick]
    folder.mkdir()
    np.savez(folder / "adrenalmnist3d.npz", **out)
    return folder


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("arch", list_models("sequence"))
def test_sequence_training_writes_a_card_resumes_and_runs_on_a_volume(tmp_path, monkeypatch, arch):
    from engine.inference.sequence import SequenceClassifier
    from engine.models.checkpoint import load_model
    from engine.tasks.evaluation import evaluate
    from engine.train.run import cli

    monkeypatch.setenv("RADLENS_HOME", str(tmp_path / "home"))
    folder = _adrenal_subset(tmp_path / "subset")
    out = tmp_path / "run"
    common = ["--dataset", "adrenalmnist3d", "--data-path", str(folder), "--model", arch, "--size", "16",
              "--depth", "12", "--batch-size", "8", "--output", str(out), "--name", "tiny-seq", "--threads", "1"]
    cli([*common, "--epochs", "1"])
    card = cli([*common, "--epochs", "2", "--resume"])
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and "val_auc" in epochs[0]
    assert card.task == "sequence" and card.preprocessing["depth"] == 12 and card.scope["modalities"] == ["SEG"]
    assert {"auc", "accuracy_at_0.5"} <= set(card.metrics["test"]) and "accuracy_at_0.5" in card.metrics["test"]["ci95"]
    loaded = load_model(out / "tiny-seq.safetensors")
    recomputed = evaluate(loaded, None, ("test",), data_path=folder)["test"]
    assert recomputed["auc"] == pytest.approx(card.metrics["test"]["auc"])
    assert recomputed["accuracy_at_0.5"] == pytest.approx(card.metrics["test"]["accuracy_at_0.5"])
    prediction = SequenceClassifier(loaded).classify(_volume(shape=(30, 40, 40)))
    assert 0 <= prediction.probability <= 1 and np.isfinite(prediction.ood_score)
    if arch == "slice_rnn":  # one weight per slice of the volume as given
        assert prediction.contribution.shape == (30,) and prediction.contribution.sum() == pytest.approx(1)
    else:
        assert prediction.contribution is None


@pytest.mark.slow
@needs_data
def test_the_shipped_sequence_card_numbers_reproduce_on_the_test_split():
    from engine.models.checkpoint import load_model
    from engine.models.installed import SHIPPED_DIR
    from engine.tasks.evaluation import evaluate

    loaded = load_model(SHIPPED_DIR / f"{SHIPPED}.safetensors")
    card = loaded.card
    assert card.task == "sequence" and card.extra["contribution"]["method"] == "attention weights over slices"
    assert card.data["counts"]["test"] == {"normal": 229, "hyperplasia": 69}
    recomputed = evaluate(loaded, DATA_DIR)
    for split in ("val", "test"):
        for key in ("auc", "accuracy_at_0.5", "sensitivity", "specificity", "ece"):
            assert recomputed[split][key] == pytest.approx(card.metrics[split][key], abs=1e-6), (split, key)


# --- cases ------------------------------------------------------------------------------------------------------


@needs_data
def test_a_demo_volume_is_analysed_with_a_contribution_per_slice_and_an_mr_loop_is_not(ctx, store):
    from engine.cases.demo import _adrenal_items
    from engine.tasks.sequence import analyse_sequence, load_sequence_classifier

    classifier = load_sequence_classifier(ctx)
    (name, data), *_ = _adrenal_items(ctx.config)
    [volume, mr, film] = ingest_files([(name, data), ("mr.dcm", dicom_bytes("emri_small.dcm")),
                                       ("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    done = analyse_sequence(ctx, classifier, store.row("images", volume.image_id))
    assert done.verdict.analysed and done.volume.n_slices == 64
    assert done.raw.contribution.shape == (64,) and done.raw.contribution.sum() == pytest.approx(1)
    row = store.row("predictions", done.prediction_id)
    assert row["task"] == "sequence" and row["status"] == "analysed"
    assert len(json.loads(row["result"])["contribution"]) == 64
    outside = analyse_sequence(ctx, classifier, store.row("images", mr.image_id))
    assert not outside.verdict.analysed and "modality MR" in outside.verdict.text
    with pytest.raises(NotAnalysed, match="single image"):
        analyse_sequence(ctx, classifier, store.row("images", film.image_id))


@needs_data
def test_cli_sequence_prints_a_line_per_volume_and_a_broken_file_fails_alone(tmp_path, monkeypatch, capsys):
    from engine.__main__ import main

    monkeypatch.setenv("RADLENS_HOME", str(tmp_path / "home"))
    with np.load(DATA_DIR / "adrenalmnist3d" / "adrenalmnist3d_64.npz") as arrays:
        (tmp_path / "gland.npy").write_bytes(_npy(arrays["test_images"][0]))
    (tmp_path / "broken.nii").write_bytes(_nifti(_volume())[:400])
    code = main(["sequence", str(tmp_path / "gland.npy"), str(tmp_path / "broken.nii"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    good = next(r for r in lines if r["file"].endswith("gland.npy"))
    assert good["status"] == "analysed" and good["slices"] == 64 and good["model"] == SHIPPED
    assert len(good["contribution"]) == 64 and sum(good["contribution"]) == pytest.approx(1, abs=1e-3)
    broken = next(r for r in lines if r["file"].endswith("broken.nii"))
    assert "error" in broken and "\n" not in broken["error"]


def test_a_series_over_the_voxel_limit_is_refused_before_a_slice_is_decoded(tmp_path, monkeypatch):
    """The stored rows bound the stack: no slice is decoded for a series the limit would refuse anyway."""
    import dataclasses

    from engine.cases.ingest import ingest_files
    from engine.config import Config, Limits
    from engine.context import Context
    from engine.errors import TooLarge
    from engine.stored import get_case
    from engine.tasks import sequence

    volume = _volume(seed=7)
    config = Config(home=tmp_path / "home", data_dir=None)
    ctx = Context.open(config)
    landed = ingest_files([(f"s{k}.dcm", data) for k, data in enumerate(_slices(volume))], ctx)
    image = get_case(ctx.store, landed[0].case_id)["images"][0]
    small = dataclasses.replace(ctx, config=dataclasses.replace(config, limits=Limits(
        max_pixels=volume.shape[1] * volume.shape[2] * (len(volume) - 1))))
    decoded = []
    monkeypatch.setattr(sequence, "load_image", lambda *a: decoded.append(a) or pytest.fail("a slice was decoded"))
    with pytest.raises(TooLarge, match="nothing was decoded"):
        sequence.volume_of(small, image)
    assert decoded == []
