"""Synthetic data: the shipped GAN generator, its SYNTHETIC mark (and ingest's refusal of it), the quality and
memorisation measures, the GAN training program and job, and a classifier trained with synthetic images."""

from __future__ import annotations

import io
import json
import zipfile

import cv2
import numpy as np
import pytest
import torch

from engine.cases.ingest import ingest_files
from engine.data.loaders import load_dataset
from engine.errors import InvalidOption, JobError
from engine.jobs.queue import get_job
from engine.jobs.synthesis import GanConfig, submit_gan
from engine.jobs.training import TrainConfig
from engine.models.checkpoint import load_model, load_state, save_state
from engine.models.installed import find_model
from engine.models.preprocess import Preprocessing
from engine.synthetic.evaluation import load_references
from engine.synthetic.export import export_zip, synthesise
from engine.synthetic.generator import find_generator, generate, installed_generators, load_generator
from engine.synthetic.mark import has_mark, mark, png_says_synthetic, synthetic_png
from engine.synthetic.quality import ClassifierFeatures, frechet_distance, memorisation, prdc
from engine.synthetic.training import as_model_input
from tests.conftest import DATA_DIR, DEFAULT_CLASSIFIER, install_references, needs_data, write_cxr_subset

# Its module-wide fixtures are built once: every test of this module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("synthetic-references")

SHIPPED = "cxr-pneumonia-gan"


@pytest.fixture(scope="module")
def shipped():
    from engine.synthetic.generator import GENERATORS_DIR

    return load_generator(GENERATORS_DIR / f"{SHIPPED}.safetensors")


# --- the generator -----------------------------------------------------------------------------------------------

def test_the_shipped_generator_makes_the_requested_class_and_size_and_a_seed_repeats(shipped):
    normal = generate(shipped, "normal", 6, seed=11)
    assert normal.shape == (6, 64, 64) and normal.dtype == np.uint8
    assert np.array_equal(normal, generate(shipped, "normal", 6, seed=11))  # seeded: the same images
    assert not np.array_equal(normal, generate(shipped, "normal", 6, seed=12))
    assert normal.std() > 20  # images with anatomy, not a flat field
    many = generate(shipped, "normal", 32, seed=3).astype(float)
    # not mode-collapsed: different latents draw different films (1.1.0: 30 grey levels, like real normals' 33;
    # the collapsed 1.0.0: 1.5)
    assert many.std(axis=0).mean() > 20
    with pytest.raises(InvalidOption, match="generates normal, pneumonia"):
        generate(shipped, "fracture", 1, seed=0)


def test_the_class_it_is_asked_for_changes_the_image_and_the_classifier_notices(shipped, config):
    """Conditioning works: the same latents drawn as pneumonia differ from the normals, and the shipped classifier
    gives them a higher probability of pneumonia."""
    classifier = load_model(find_model(config, DEFAULT_CLASSIFIER).path)

    def p_pneumonia(images):
        x = classifier.preprocessing.normalize(as_model_input(images, classifier.preprocessing))
        with torch.no_grad():
            return torch.softmax(classifier.model(x), 1)[:, 1].numpy()

    normal, pneumonia = (generate(shipped, label, 24, 5) for label in ("normal", "pneumonia"))
    assert np.abs(normal.astype(int) - pneumonia.astype(int)).mean() > 10
    assert np.median(p_pneumonia(pneumonia)) > np.median(p_pneumonia(normal))


def test_the_mode_seeking_term_penalises_a_collapsed_batch_and_is_not_fooled_by_brightness():
    from engine.train.gan import _mode_seeking

    g = torch.Generator().manual_seed(0)
    z, film = torch.randn(8, 16, generator=g), torch.rand(1, 1, 16, 16, generator=g) * 2 - 1
    collapsed = film.repeat(8, 1, 1, 1)
    diverse = torch.rand(8, 1, 16, 16, generator=g) * 2 - 1
    contrast, brightness = torch.linspace(0.3, 1, 8).view(8, 1, 1, 1), torch.linspace(-0.5, 0.5, 8).view(8, 1, 1, 1)
    brightness_only = collapsed * contrast + brightness
    penalty = _mode_seeking(diverse, z)
    assert _mode_seeking(collapsed, z) > 100 * penalty and _mode_seeking(brightness_only, z) > 100 * penalty


def test_the_shipped_generator_is_installed_apart_from_the_task_models(config):
    assert SHIPPED in [name for name, _ in installed_generators(config)]
    from engine.models.installed import installed_models

    assert SHIPPED not in [m.name for m in installed_models(config)]  # it answers no clinical question


# --- the SYNTHETIC mark and ingest --------------------------------------------------------------------------------

def test_synthetic_images_are_refused_by_ingest_with_or_without_their_metadata(ctx, shipped):
    image = cv2.resize(generate(shipped, "normal", 1, 0)[0], (256, 256))
    png = synthetic_png(image, json.dumps({"generator": SHIPPED}))
    assert png_says_synthetic(png) and has_mark(cv2.imdecode(np.frombuffer(png, np.uint8), 0))
    stripped = cv2.imencode(".png", mark(image))[1].tobytes()  # pixels only: the metadata chunk removed
    jpeg = cv2.imencode(".jpg", mark(image), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    unmarked = cv2.imencode(".png", image)[1].tobytes()
    results = ingest_files([("a.png", png), ("b.png", stripped), ("c.jpg", jpeg), ("d.png", unmarked)], ctx)
    assert [r.status for r in results] == ["error", "error", "error", "ok"]  # the rest of the batch lands
    assert all("synthetic image" in r.error for r in results[:3])
    with ctx.store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1


def test_the_mark_is_not_seen_on_real_films():
    films = sorted((DATA_DIR / "cxr_pneumonia" / "train" / "normal").glob("*.jpg"))[:20] if DATA_DIR else []
    dark = np.zeros((512, 512), np.uint8)
    assert not has_mark(dark) and not any(has_mark(cv2.imread(str(f), 0)) for f in films)


# --- the measures ------------------------------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form_on_gaussian_features():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (400, 1)), rng.normal(-0.5, 0.5, (300, 1))
    hand = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2  # 1-D: (mu) ^2 + (sigma_a - sigma_b) ^2
    assert frechet_distance(a, b) == pytest.approx(hand, rel=1e-9)
    # A 2^3 factorial design has exactly diagonal sample covariance: the distance is per axis.
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    sa, sb = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.5])
    fa, fb = corners * sa + [1, 0, 0], corners * sb
    scale = np.sqrt(8 / 7)  # the sample standard deviation of +-s over 8 points is s * sqrt(8/7)
    assert frechet_distance(fa, fb) == pytest.approx(1 + ((sa - sb) ** 2).sum() * scale ** 2, rel=1e-9)
    same = rng.normal(0, 1, (4000, 3))
    assert frechet_distance(same[:2000], same[2000:]) < 0.02


def test_prdc_matches_a_hand_computation():
    real, fake = np.array([[0.0], [1.0], [2.0], [10.0]]), np.array([[0.5], [20.0]])
    # real k=1 radii 1, 1, 1, 8; fake radii 19.5, 19.5 (worked through in the docstring of prdc's reference)
    assert prdc(real, fake, k=1) == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5}


@pytest.mark.slow
@needs_data
def test_memorisation_flags_a_planted_copy_and_near_copy_and_few_real_images(config):
    splits = load_dataset("cxr_pneumonia", Preprocessing(size=64), DATA_DIR, only=("train", "test"))
    as_uint8 = {s: (splits.sets[s].images[:, 0].numpy() * 255).round().astype(np.uint8) for s in ("train", "test")}
    train, held_out = as_uint8["train"][:300], as_uint8["test"][:60]
    rng = np.random.default_rng(1)
    near = np.clip(train[7].astype(int) + rng.integers(-3, 4, train[7].shape), 0, 255).astype(np.uint8)
    shifted = np.roll(train[40], 1, axis=1)  # a one-pixel shift: a copy by any reader's standard
    others = as_uint8["test"][60:80]  # real images the check has never seen: they should mostly pass
    candidates = np.concatenate([others, train[3:4], near[None], shifted[None]])
    features = ClassifierFeatures(load_model(find_model(config, DEFAULT_CLASSIFIER).path))
    f = {name: features(images)["classifier"] for name, images in
         (("candidates", candidates), ("train", train), ("held", held_out))}
    check = memorisation(candidates, f["candidates"], train, f["train"], held_out, f["held"])
    assert check.flagged[-3:].all()  # the exact copy, the near copy and the shifted copy
    assert check.pixel_index[-3] == 3 and check.pixel_index[-2] == 7 and check.pixel_distance[-3] == 0
    assert check.flagged[:-3].sum() <= 2, check.flagged[:-3]


# --- generation, export, the training program ---------------------------------------------------------------------

@pytest.mark.slow
@needs_data
def test_a_gallery_is_exported_without_flagged_images_and_never_laundered_back_in(ctx, config, reference_cache,
                                                                                  shipped):
    install_references(config, reference_cache)
    refs = load_references(config, shipped, load_model(find_model(config, DEFAULT_CLASSIFIER).path))
    made = synthesise(ctx, shipped, refs, "normal", 6, seed=3)
    made.check.flagged[1] = True  # as if image 1 were a copy: it must not leave
    with zipfile.ZipFile(io.BytesIO(export_zip(ctx, shipped, made))) as archive:
        names = archive.namelist()
        manifest = archive.read("manifest.csv").decode()
        first = archive.read(names[0])
    kept = {f"synthetic-normal-seed3-{i:04d}.png" for i in np.flatnonzero(~made.check.flagged)}
    assert {n for n in names if n.endswith(".png")} == kept and "manifest.csv" in names
    assert "synthetic-normal-seed3-0001.png" not in kept
    assert manifest.count("\n") == 7 and "train/" in manifest  # header + 6 rows naming their nearest real image
    assert png_says_synthetic(first) and has_mark(cv2.imdecode(np.frombuffer(first, np.uint8), 0))
    with ctx.store.read() as db:
        actions = [r[0] for r in db.execute("SELECT action FROM audit_log ORDER BY id")]
    assert "synthetic.generate" in actions and "synthetic.export" in actions
    _laundered_copies_are_refused_and_real_films_land(ctx, cv2.imdecode(np.frombuffer(first, np.uint8), 0))


def _laundered_copies_are_refused_and_real_films_land(ctx, exported: np.ndarray) -> None:
    """Every image made for a person is registered; a 1-pixel crop, a resize, a flip, an inversion, 16 bits or
    paint over the mark (the laundering the security review did) no longer gets it in as a patient."""
    h, w = exported.shape
    painted = exported.copy()
    painted[:h // 12 + 2, :w // 2] = int(exported[h // 4:, w // 4:].mean())
    edits = {"crop.png": exported[1:, 1:], "small.png": cv2.resize(exported, (w // 2, h // 2)),
             "big.png": cv2.resize(exported, (w * 2, h * 2)), "flip.png": exported[:, ::-1],
             "upside.png": exported[::-1], "inverted.png": 255 - exported,
             "deep.png": exported.astype(np.uint16) * 257, "painted.png": painted}
    for name in ("crop.png", "small.png", "flip.png", "inverted.png", "painted.png"):
        assert not has_mark(edits[name]), name  # the mark alone would have let these in
    laundered = [(n, cv2.imencode(".png", np.ascontiguousarray(p))[1].tobytes()) for n, p in edits.items()]
    laundered.append(("quality.jpg", cv2.imencode(".jpg", painted, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()))
    films = sorted((DATA_DIR / "cxr_pneumonia" / "train" / "normal").glob("*.jpg"))[:20]
    results = ingest_files([*laundered, *((f.name, f.read_bytes()) for f in films)], ctx)
    refused = [r.file for r in results if r.error.startswith("SyntheticImage")]
    assert refused == [name for name, _ in laundered]
    assert all(r.status == "ok" for r in results[len(laundered):])  # real films are not mistaken for one


def test_a_clinician_may_not_generate(ctx, shipped):
    from engine.context import User
    from engine.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        synthesise(ctx.as_user(User("local:c", "c", "clinician")), shipped, None, "normal", 1, 0)


def test_synthetic_images_need_a_2d_classifier_and_no_cross_validation():
    with pytest.raises(JobError, match="no cross-validation"):
        TrainConfig(synthetic=10, folds=5).resolved()
    with pytest.raises(JobError, match="2-D classification"):
        TrainConfig(dataset="hc18", model="unet", synthetic=10).resolved()


@pytest.mark.slow
@needs_data
def test_training_with_synthetic_minority_images_end_to_end(ctx, config, tmp_path, reference_cache):
    from engine.train.run import main

    install_references(config, reference_cache)
    folder = write_cxr_subset(tmp_path / "subset", {"train": 10, "val": 6, "test": 6})
    with open(folder / "manifest.csv") as f:  # 4 of the 10 training normals left out: normal is the minority
        lines = f.read().splitlines()
    keep = [line for line in lines if not (",normal,train," in line and lines.index(line) <= 4)]
    (folder / "manifest.csv").write_text("\n".join(keep) + "\n")
    cfg = TrainConfig(dataset="folder", data_path=folder, model="resnet18", size=64, epochs=1, batch_size=8,
                      synthetic=5, output=tmp_path / "run", name="with-synthetic", threads=1)
    card = main(cfg, ctx)
    synthetic = card.data["synthetic"]
    assert synthetic["label"] == "normal" and synthetic["images"] == 5 and synthetic["generator"] == SHIPPED
    assert card.data["counts"]["train"] == {"normal": 6 + 5, "pneumonia": 10}
    assert card.data["counts"]["test"] == {"normal": 6, "pneumonia": 6}  # evaluation stays on real images
    assert "--synthetic 5" in card.training["command"]


@pytest.mark.slow
def test_the_gan_program_trains_resumes_and_runs_as_a_job(ctx, config, tmp_path):
    from engine.train.gan import main, run_job

    if DATA_DIR is None:
        pytest.skip("RADLENS_DATA_DIR (../shared/data) is not present")
    small = GanConfig(dataset="pneumoniamnist", size=16, width=8, z_dim=16, epochs=1, batch_size=256,
                      output=tmp_path / "gan", name="tiny-gan", threads=1)
    main(small, ctx)
    state = load_state(tmp_path / "gan" / "state.pt")  # as if the first segment had run an hour before a stop
    save_state(tmp_path / "gan" / "state.pt", {**state, "elapsed_s": 3600.0})
    card = main(GanConfig(**{**small.__dict__, "epochs": 2}), ctx, resume=True)  # continues at epoch 2
    assert 3600 < card["training"]["wall_time_s"] < 3600 + 600  # both segments counted
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "gan" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1] and card["training"]["epochs_run"] == 2
    made = generate(load_generator(tmp_path / "gan" / "tiny-gan.safetensors"), "pneumonia", 3, 0)
    assert made.shape == (3, 16, 16)
    job_id = submit_gan(ctx, GanConfig(**{**small.__dict__, "output": None, "name": "tiny-gan-job"}), start=False)
    with ctx.store.write() as db:  # what dispatch does before the job's process starts
        db["jobs"].update(job_id, {"status": "running"})
    run_job(ctx, job_id)
    assert get_job(ctx.store, job_id).status == "finished"
    assert find_generator(config, "tiny-gan-job").parent == config.home / "generators"
    with pytest.raises(JobError, match="4 x a power of two"):
        GanConfig(size=48).checked()
