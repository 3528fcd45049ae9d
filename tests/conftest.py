"""Shared fixtures: an isolated RADLENS_HOME per test, real test files, the shared datasets."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from engine.config import Config
from engine.context import Context, User
from engine.store import open_store

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup` a worker must see each xdist_group test under its group's id, or the groups are
    silently ignored and every module-wide fixture is built again wherever its tests land (as with pytest 9.2
    and xdist 3.8). A failed check stops the run instead of letting it get slow."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and config.getvalue("loadgroup")):
        return
    ungrouped = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if ungrouped:
        raise pytest.UsageError(f"--dist loadgroup is not grouping {len(ungrouped)} tests (first: {ungrouped[0]}); "
                                "see the pytest pin in requirements-dev.txt")

@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest leaves the page script as `sys.modules["__main__"]`; a later test in the same process
    that starts multiprocessing workers (spawn) would then re-run dashboard/app.py in each worker. Restored after
    every test, so the order tests run in (and which xdist worker runs them) does not matter."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


DATA_DIR = Path(os.environ["RADLENS_DATA_DIR"]) if os.environ.get("RADLENS_DATA_DIR") else None
DEFAULT_CLASSIFIER = "cxr-pneumonia-resnet18-v2"  # the newest shipped classifier, active by default
needs_data = pytest.mark.skipif(
    DATA_DIR is None or not DATA_DIR.is_dir(), reason="RADLENS_DATA_DIR (../shared/data) is not present"
)


def dicom_path(name: str) -> Path:
    """A real DICOM from pydicom's test files or pydicom-data (both installed locally)."""
    return Path(get_testdata_file(name))


def dicom_bytes(name: str) -> bytes:
    return dicom_path(name).read_bytes()


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(home=tmp_path / "home", data_dir=DATA_DIR)


@pytest.fixture
def store(config):
    return open_store(config)


@pytest.fixture
def ctx(config, store) -> Context:
    """The engine's context for this test's home, acting as the configuration's user."""
    return Context(config, store, User(config.user))


@pytest.fixture
def small_disk():
    """small_disk(folder, "320m") puts `folder` on a real filesystem of that size (tmpfs), so a write can
    really fail with "No space left on device"; calling it again on the same folder resizes it. Needs root
    to mount; unmounted at teardown."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-o", f"remount,size={size}", str(folder)] if folder in mounted else \
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"a real full disk needs a small tmpfs mount, which failed here: {done.stderr.strip()} "
                        "(the simulated disk-full test still runs)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in dict.fromkeys(reversed(mounted)):
        if subprocess.run(["umount", str(folder)]).returncode:
            subprocess.run(["umount", "-l", str(folder)])


def store_snapshot(config: Config) -> tuple:
    """What a failed ingest must leave unchanged: case/image rows and stored files."""
    from engine.store import Store

    with Store(config.db_path).read() as db:
        counts = tuple(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cases", "images"))
    files = sorted(str(p) for p in config.files_dir.rglob("*")) if config.files_dir.exists() else []
    return counts, tuple(files)


def make_model_file(path: Path, size: int = 64, mean: float = 0.3, std: float = 0.2, half: bool = False) -> Path:
    """A randomly initialised (untrained) classifier saved with a complete card: for format and
    plumbing tests only; anything about quality uses the shipped weights."""
    import torch

    from engine.models import create_model, save_model
    from engine.models.preprocess import Preprocessing

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2).eval()
    width = model.fc.in_features  # the pooled layer4 features the OOD statistics live on
    card = {
        "name": path.stem, "version": "0.0.1", "task": "classification", "arch": "resnet18",
        "model_args": {"num_classes": 2}, "labels": ["normal", "pneumonia"], "positive_label": "pneumonia",
        "preprocessing": Preprocessing(size=size, mean=mean, std=std).to_dict(),
        "calibration": {"temperature": 1.5}, "operating_point": {"threshold": 0.5},
        "ood": {"threshold": 10.0}, "metrics": {},
    }
    extras = {"ood_mean": torch.zeros(width), "ood_precision": torch.eye(width)}
    save_model(path, model, card, extras=extras, half=half)
    return path


def write_cxr_subset(folder: Path, per_label: dict[str, int] | None = None) -> Path:
    """A user-style manifest (path,label,split,patient_id) over real chest X-rays: by default 12/6/6 per label
    and split (48 films), enough for a training run of seconds."""
    counts = per_label or {"train": 12, "val": 6, "test": 6}
    with open(DATA_DIR / "cxr_pneumonia" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for split, n in counts.items() for label in ("normal", "pneumonia")
              for r in [r for r in rows if r["demo_split"] == split and r["label"] == label][:n]]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "patient_id"])
        writer.writerows([str(DATA_DIR / "cxr_pneumonia" / r["path"]), r["label"], r["demo_split"], r["patient_id"]]
                         for r in chosen)
    return folder


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory) -> Path:
    """The shipped generator's real reference images and their features in the default classifier's spaces,
    computed once per session (about a minute and a half on 2 cores) and copied into a test's home by
    `install_references`."""
    from engine.models.checkpoint import load_model
    from engine.models.installed import find_model
    from engine.synthetic.evaluation import load_references
    from engine.synthetic.generator import find_generator, load_generator

    config = Config(home=tmp_path_factory.mktemp("synthetic-home"), data_dir=DATA_DIR)
    load_references(config, load_generator(find_generator(config)),
                    load_model(find_model(config, DEFAULT_CLASSIFIER).path))
    return next((config.home / "synthetic").glob("references-*.npz"))


def install_references(config: Config, cache: Path) -> None:
    import shutil

    (config.home / "synthetic").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache, config.home / "synthetic" / cache.name)
