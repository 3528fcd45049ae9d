"""Training page pieces: the job form, the queue, and the live view of one job (a self-refreshing fragment)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import links
from dashboard.auth import refreshing
from dashboard.model_widgets import headline
from dashboard.text import md, plain
from engine.config import Config
from engine.context import Context
from engine.data import datasets, usable_review_ids
from engine.errors import UnknownModel
from engine.inference import PRECISIONS
from engine.jobs import Job, JobStatus, TrainConfig, TrainingRequest, get_job, job_metrics, log_tail, visible_gpus
from engine.models import active_model, find_model, get_spec, list_models
from engine.synthetic import installed_generators
from engine.tasks import get_task, task_names

__all__ = ["job_form", "queue_table", "job_title", "live_job", "compare_link", "REFRESH_S"]

REFRESH_S = 2.0
_BADGES = {"queued": ":gray-badge[queued]", "running": ":blue-badge[running]", "finished": ":green-badge[finished]",
           "failed": ":red-badge[failed]", "cancelled": ":orange-badge[cancelled]",
           "interrupted": ":orange-badge[interrupted]"}


def job_form(ctx: Context) -> TrainingRequest | None:
    """The new-job form; returns the request when submitted (the page submits it)."""
    names = task_names()
    task = get_task(st.segmented_control("Task", names, default=names[0], key="train.task") or names[0])
    active = active_model(ctx, task.name)
    defaults = task.defaults
    with st.form("train.form", border=True):
        c1, c2, c3 = st.columns(3)
        dataset = c1.selectbox("Dataset", datasets(task.name), help="Read from RADLENS_DATA_DIR; 'folder' is your own")
        archs = [m for m in list_models() if get_spec(m).task == task.name]
        arch = c2.selectbox("Architecture", archs, index=archs.index(active.card.arch))
        data_path = c3.text_input("Folder (dataset 'folder' only)", placeholder="my-set (manifest.csv)", max_chars=500,
                                  help="A folder under RADLENS_HOME/datasets (a name is enough) or under the "
                                       "datasets folder, RADLENS_DATA_DIR; no other path on the server")
        c1, c2, c3, c4, c5 = st.columns(5)
        size = c1.number_input("Input width (px)", 16, 1024, defaults.size, 16)
        if defaults.depth:  # a sequence task: volumes are resampled to depth x width x width
            depth, height = c2.number_input("Slices per volume", 2, 1024, defaults.depth,
                                            help="Each volume (or cine loop) is resampled to this many slices"), 0
        else:
            depth, height = None, c2.number_input("Input height (px)", 0, 1024, defaults.height or 0, 16,
                                                  help="0: square (the width). Images are resized to width x height")
        epochs = c3.number_input("Epochs", 1, 500, defaults.epochs)
        batch = c4.number_input("Batch size", 2, 1024, defaults.batch_size)
        lr = c5.number_input("Learning rate", 1e-6, 1.0, TrainConfig.lr, format="%.0e")
        c1, c2, c3, c4 = st.columns(4)
        augment = c1.toggle("Augmentation", value=True, help="The task's standard augmentation (see the card)")
        balance = c2.selectbox("Class balancing", ["weights", "none"], disabled=not task.class_balancing,
                               format_func={"weights": "Class-weighted loss", "none": "None"}.get)
        device = c3.selectbox("Device", ["auto", "cpu", "cuda"], help="auto: the GPU when there is one")
        gpus = c4.number_input("GPUs", 1, max(1, visible_gpus()), 1, disabled=visible_gpus() < 2,
                               help="More than one runs torchrun with one process per GPU")
        c1, c2, c3, c4 = st.columns(4)
        precision = c1.selectbox("Precision", PRECISIONS, help="bf16: bfloat16 mixed precision, about 2.8x faster "
                                 "on CPUs with AMX/AVX512-BF16; auto: fp16 on CUDA, fp32 on CPU")
        smoothing = c2.number_input("Label smoothing", 0.0, 0.4, 0.0, 0.05, disabled=not task.label_smoothing)
        boundary = c4.number_input("Boundary loss weight", 0.0, 1.0, 0.0, 0.01, disabled=not task.boundary_loss,
                                   help="Segmentation: MONAI's HausdorffDTLoss added to Dice + CE with this weight")
        folds = c3.number_input("Cross-validation folds", 0, 10, 0, disabled=not task.cross_validates,
                                help="0: calibrate on the validation split. K >= 3: calibrate and set the "
                                     "thresholds on out-of-fold predictions over train + val, then train the "
                                     "model on all of them (K + 1 trainings)")
        c1, c2 = st.columns(2)
        generators = [name for name, _ in installed_generators(ctx.config)] if task.synthetic_images else []
        synthetic = c1.number_input("Synthetic minority images", 0, 5000, 0, disabled=not generators,
                                    help="Add this many GAN images of the training split's smallest class "
                                         "(screened for memorisation; validation and test stay real). See the "
                                         "Synthetic data page")
        generator = c2.selectbox("Generator", generators or ["none installed"], disabled=not generators)
        fine_tune = st.toggle(f"Fine-tune from the active model ({active.name})", value=False)
        reviews = len(usable_review_ids(ctx.store, active.card.labels)) if task.uses_reviews else 0
        c1, c2 = st.columns(2)
        use_reviews = c1.toggle(f"Add the {reviews} clinician-reviewed case(s)", value=False, disabled=not reviews,
                                help="Confirmed or corrected labels from the Diagnosis page. Films of the "
                                "validation or test split are left out automatically.")
        with_base = c2.toggle("... mixed with the dataset's training split", value=True, disabled=not reviews)
        if not st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:"):
            return None
    config = TrainConfig(dataset=dataset, model=arch, size=int(size), height=int(height) or None,
                         depth=int(depth) if depth else None,
                         epochs=int(epochs), batch_size=int(batch),
                         lr=float(lr), augment=augment, balance=balance, device=device, precision=precision,
                         label_smoothing=float(smoothing), folds=int(folds), boundary_loss=float(boundary),
                         synthetic=int(synthetic), generator=generator if synthetic else None,
                         data_path=Path(data_path.strip()) if data_path.strip() else None)
    return TrainingRequest(config, fine_tune=fine_tune, use_reviews=use_reviews, with_base_train=with_base,
                           gpus=int(gpus))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {secs:02d} s"


def _held_out(config: Config, job: Job) -> str:
    """A finished job's model's test-split headline (from its card), for the queue."""
    if job.status is not JobStatus.FINISHED:
        return ""
    try:
        return headline(find_model(config, job.model_name).card)
    except UnknownModel:
        return "model removed"


def queue_table(config: Config, jobs: list[Job]) -> None:
    rows = []
    for j in jobs:
        train = j.config.get("train", {})
        rows.append({"Job": j.id, "Status": j.status.value, "Task": j.task, "Dataset": train.get("dataset"),
                     "Architecture": train.get("model"), "Device": j.device, "Epochs": train.get("epochs"),
                     "Reviews": len(j.review_ids) or "",
                     "Model": j.model_name if j.status is JobStatus.FINISHED else "",
                     "Held-out test": _held_out(config, j), "Started by": j.actor,
                     "Created (UTC)": (j.created_at or "")[:19].replace("T", " "), "Error": j.error})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def job_title(job: Job) -> str:
    train = job.config.get("train", {})
    return f"Job {job.id}: {job.status.value} - {train.get('model')} on {train.get('dataset')}"


def _curves(metrics: pd.DataFrame, score: str) -> go.Figure:
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", score.replace("_", " ")))
    last = metrics.drop_duplicates(["name", "step"], keep="last")  # a resumed epoch replaces the killed one
    for name, dash, mode in (("loss", None, "lines"), ("train_loss", "dot", "lines+markers"),
                             ("val_loss", None, "lines+markers")):
        series = last[last["name"] == name]
        figure.add_scatter(x=series["step"], y=series["value"], mode=mode, name=name.replace("_", " "),
                           line=dict(dash=dash), row=1, col=1)
    series = last[last["name"] == score]
    figure.add_scatter(x=series["step"], y=series["value"], mode="lines+markers", name=score.replace("_", " "),
                       row=1, col=2)
    figure.update_xaxes(title_text="step")
    if len(series):  # AUC and Dice live in [0, 1]; plotly's own range around one point spans -0.5 to 1.5
        low, high = series["value"].min(), series["value"].max()
        pad = max(0.02, 0.1 * (high - low))
        figure.update_yaxes(range=[max(0.0, low - pad), min(1.0, high + pad)], row=1, col=2)
    figure.update_layout(height=330, margin=dict(l=0, r=0, t=30, b=0), legend=dict(orientation="h", y=-0.25))
    return figure


def _progress(job: Job) -> None:
    p, spec = job.progress, job.config["train"]
    if "epoch" not in p:
        st.progress(0.0, text=p.get("phase", "waiting for the training process to start").capitalize())
        return
    done = (p["epoch"] + p["step"] / p["steps"]) / spec["epochs"]
    eta = f" - about {_duration(p['eta_s'])} left at most (early stopping may end it sooner)" \
        if job.status is JobStatus.RUNNING else ""
    phase = p.get("phase") not in ("training", "validated") and job.status is JobStatus.RUNNING
    st.progress(min(done, 1.0), text=f"Epoch {p['epoch'] + 1}/{spec['epochs']}, step {p['step']}/{p['steps']}{eta}"
                + (f" - {p['phase']}" if phase else ""))
    c = st.columns(5)
    c[0].metric("Throughput", f"{p.get('images_per_s', 0):.1f} img/s")
    c[1].metric("Best epoch", p["best_epoch"] + 1 if "best_epoch" in p else "-")
    if "gpu_memory_mb" in p:
        c[2].metric("GPU memory (peak)", f"{p['gpu_memory_mb']:.0f} MB")
        c[3].metric("GPU utilisation", f"{p.get('gpu_util_percent', float('nan')):.0f} %")
    else:
        c[2].metric("CPU (training process)", f"{p['cpu_percent']:.0f} %" if "cpu_percent" in p else "-")
        c[3].metric("Memory (training process)", f"{p['rss_mb']:.0f} MB" if "rss_mb" in p else "-")
    c[4].metric("Machine RAM in use", f"{p['ram_percent']:.0f} %" if "ram_percent" in p else "-")


def compare_link(job: Job) -> None:
    """A finished training job's next step: its model against the active one, on the Models page."""
    links.page_link("models", label=f"Compare {job.model_name} with the active model and promote it",
                    icon=":material/compare_arrows:", query_params={"model": job.model_name})


def _render(ctx: Context, job_id: int, was_active: bool) -> None:
    job = get_job(ctx.store, job_id)
    if was_active and not job.active:
        st.rerun(scope="app")  # the queue and buttons outside this fragment change too
    train, reviews = job.config["train"], len(job.review_ids)
    extras = (", fine-tuned from the active model" if job.config.get("fine_tune") else "") + \
        (f", with {reviews} reviewed case(s)" if reviews else "")
    st.markdown(md("**Job {id}** ", id=job_id) + _BADGES[job.status])
    st.text(f"{train['model']} on {train['dataset']}, {job.device}{extras}")
    if job.error and job.status is not JobStatus.FINISHED:
        (st.error if job.status is JobStatus.FAILED else st.warning)(plain(job.error), icon=":material/error:")
    _progress(job)
    metrics = pd.DataFrame(job_metrics(ctx.store, job_id), columns=["epoch", "step", "name", "value", "created_at"])
    if len(metrics):
        st.plotly_chart(_curves(metrics, get_task(job.task).score), width="stretch", config={"displayModeBar": False},
                        key=f"curves.{job_id}")
    with st.expander("Log (last lines)", expanded=job.status is JobStatus.FAILED):
        st.code(log_tail(ctx.config, job_id) or "(no output yet)", language="text")


def live_job(ctx: Context, job_id: int) -> None:
    """The job's view; refreshes itself every REFRESH_S seconds while the job is queued or running."""
    active = get_job(ctx.store, job_id).active
    refreshing(_render, REFRESH_S if active else None)(ctx, job_id, active)
