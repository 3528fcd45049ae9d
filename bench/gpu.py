"""The GPU check: one script for a machine with one NVIDIA GPU (H100/H200), under 8 minutes, printing JSON.

1. CUDA code paths, each pass/fail with its reason: device selection (the batch engine and the case path pick
   CUDA), AMP (fp16 autocast; probabilities agree with the CPU's), channels_last (the classifier's weights and
   input), the out-of-memory message from a real failed allocation, DDP with NCCL on one GPU (one step).
2. Throughput on real chest films: classification + single-pass Grad-CAM at batch 64 and 256 (AMP, channels_last;
   goal >= 5,000 images/s), without CAM, and the GPU part alone (inputs already on the device); the U-Net's
   images/s; training images/s of the shipped classifier's recipe (ResNet-18, 224 px, batch 32, AMP); the batch
   engine end to end (local backend, 1 worker on the GPU); peak GPU memory of each.

Run: python -m bench.gpu [--films 512] [--seconds 20]   (needs $RADLENS_DATA_DIR; writes $OUT/gpu.json when OUT
is set). `--device cpu --quick` runs the same code on a CPU in seconds (the tests do), with the CUDA-only checks
reported as skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.common import machine
from engine.inference.classify import Classifier
from engine.inference.predict import autocast
from engine.inference.segment import Segmenter
from engine.io import read_study
from engine.models.checkpoint import load_model
from engine.models.device import choose_device
from engine.models.installed import SHIPPED_DIR
from engine.models.preprocess import model_view
from engine.models.registry import create_model

CLASSIFIER = SHIPPED_DIR / "cxr-pneumonia-resnet18-v2.safetensors"
SEGMENTER = SHIPPED_DIR / "hc18-unet.safetensors"


def _films(n: int) -> list[np.ndarray]:
    data = Path(os.environ["RADLENS_DATA_DIR"]) / "cxr_pneumonia"
    with open(data / "manifest.csv", newline="") as f:
        paths = [data / r["path"] for r in csv.DictReader(f)][:n]
    return [model_view(read_study(p.read_bytes())) for p in paths]


def _memory(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def _reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _rate(fn, images_per_call: int, seconds: float, device: str) -> dict:
    """Images/s of fn() repeated for about `seconds` (after one warm-up call), with the peak GPU memory."""
    fn()
    _reset(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
        if device == "cuda":
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"images_per_s": round(calls * images_per_call / elapsed, 1), "calls": calls,
            "peak_gpu_memory_mb": _memory(device)}


# --- 1. CUDA code paths ----------------------------------------------------------------------------------------
def check_device_selection(device: str, films) -> str:
    assert choose_device("auto") == device, f"auto picked {choose_device('auto')}"
    return f"auto -> {choose_device('auto')}"


def check_amp(device: str, films) -> str:
    if device != "cuda":
        return "skipped: no CUDA"
    gpu = Classifier(load_model(CLASSIFIER, "cuda"), "cuda")
    cpu = Classifier(load_model(CLASSIFIER, "cpu"), "cpu")
    with autocast(torch.device("cuda")):
        dtype = gpu.model(torch.zeros(1, 1, 224, 224, device="cuda").contiguous(
            memory_format=torch.channels_last)).dtype
    assert dtype == torch.float16, f"autocast gave {dtype}"
    a = [p.probability for p in gpu.classify_batch(films[:16])]
    b = [p.probability for p in cpu.classify_batch(films[:16])]
    worst = max(abs(x - y) for x, y in zip(a, b))
    assert worst < 0.02, f"AMP probabilities differ from the CPU's by {worst:.4f}"
    return f"fp16 autocast; largest probability difference to fp32 CPU {worst:.5f} over 16 films"


def check_channels_last(device: str, films) -> str:
    model = Classifier(load_model(CLASSIFIER, device), device).model
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last), "weights are not channels_last"
    return "classifier weights channels_last"


def check_oom_message(device: str, films) -> str:
    if device != "cuda":
        return "skipped: no CUDA"
    from engine.jobs.training import TrainConfig
    from engine.train.run import failure_message

    free, _ = torch.cuda.mem_get_info()
    try:
        torch.empty(int(free * 2), dtype=torch.uint8, device="cuda")
    except torch.cuda.OutOfMemoryError as error:
        message = failure_message(error, TrainConfig(batch_size=256).resolved())
        assert "batch size of 128 or smaller" in message, message
        return message
    finally:
        torch.cuda.empty_cache()
    raise AssertionError("allocating twice the free memory did not fail")


def check_ddp_nccl(device: str, films) -> str:
    if device != "cuda":
        return "skipped: no CUDA"
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(create_model("resnet18").cuda(), device_ids=[0])
        loss = model(torch.randn(8, 1, 224, 224, device="cuda")).logsumexp(1).mean()
        loss.backward()
        grads = sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None)
        assert grads > 0, "no gradient reached the parameters"
        return f"one DDP step over NCCL (backend {dist.get_backend()}), gradient sum {grads:.3g}"
    finally:
        dist.destroy_process_group()


CHECKS = {"device_selection": check_device_selection, "amp": check_amp, "channels_last": check_channels_last,
          "oom_message": check_oom_message, "ddp_nccl": check_ddp_nccl}


# --- 2. Throughput ---------------------------------------------------------------------------------------------
def classification(device: str, films, seconds: float, batches: tuple[int, ...]) -> dict:
    classifier = Classifier(load_model(CLASSIFIER, device), device)
    out = {}
    for batch in batches:
        grays = [films[i % len(films)] for i in range(batch)]
        out[f"cam_batch_{batch}"] = _rate(lambda: classifier.classify_batch(grays), batch, seconds, device)
        out[f"no_cam_batch_{batch}"] = _rate(lambda: classifier.classify_batch(grays, cam=False), batch, seconds,
                                             device)
        x = torch.cat([classifier.loaded.preprocessing(g) for g in grays]).to(device,
                                                                             memory_format=torch.channels_last)

        def forward_only():
            with torch.inference_mode(), autocast(torch.device(device)):
                classifier.model(x)
        out[f"gpu_forward_only_batch_{batch}"] = _rate(forward_only, batch, seconds, device)
    return out


def segmentation(device: str, films, seconds: float) -> dict:
    segmenter = Segmenter(load_model(SEGMENTER, device), device)
    grays = films[:16]
    per_image = _rate(lambda: [segmenter.segment(g) for g in grays], len(grays), seconds, device)
    x = torch.cat([segmenter.loaded.preprocessing(g) for g in films[:64]]).to(device)

    def forward_only():
        with torch.inference_mode(), autocast(torch.device(device)):
            segmenter.model(x)
    return {"segment_and_measure_per_image": per_image, "gpu_forward_only_batch_64": _rate(forward_only, len(x),
                                                                                            seconds, device)}


def training(device: str, seconds: float, batch: int = 32, size: int = 224) -> dict:
    """The shipped classifier's recipe (ResNet-18, 224 px, batch 32, AdamW, AMP, channels_last), on random
    inputs: the step's cost does not depend on the pixels."""
    model = create_model("resnet18").to(device, memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(enabled=device == "cuda")
    x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)

    def step():
        optimiser.zero_grad(set_to_none=True)
        with autocast(torch.device(device)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    return _rate(step, batch, seconds, device)


def batch_engine(device: str, films: int) -> dict:
    """The batch engine end to end (read, sandboxed decode, forward + CAM, Parquet + SQLite) on `films` films."""
    from engine.batch.run import BatchRequest, run_batch, start_batch
    from engine.config import Config
    from engine.context import Context

    data = Path(os.environ["RADLENS_DATA_DIR"])
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "films.csv"
        with open(data / "cxr_pneumonia" / "manifest.csv", newline="") as f:
            paths = [str(data / "cxr_pneumonia" / r["path"]) for r in csv.DictReader(f)][:films]
        manifest.write_text("path\n" + "\n".join(paths) + "\n")
        ctx = Context.open(Config(home=Path(tmp) / "home", data_dir=data), "bench:gpu")
        job = start_batch(ctx, BatchRequest(str(manifest), workers=1, batch_size=64, shard_size=256, device=device),
                          background=False)
        start = time.perf_counter()
        summary = run_batch(ctx, job)
        seconds = time.perf_counter() - start
    return {"films": films, "seconds": round(seconds, 1), "images_per_s": round(films / seconds, 1),
            "stage_seconds": summary["progress"].get("stage_seconds"), "failed": summary["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--films", type=int, default=512, help="real films decoded for the throughput runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per throughput figure")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 films, 0.2 s per figure, batch 8")
    args = parser.parse_args()
    device = choose_device(args.device)
    seconds, n = (0.2, 16) if args.quick else (args.seconds, args.films)
    started = time.perf_counter()
    report: dict = {"bench": "gpu", "machine": machine(), "device": device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
    films = _films(n)
    report["checks"] = {}
    for name, check in CHECKS.items():
        try:
            report["checks"][name] = {"ok": True, "detail": check(device, films)}
        except Exception as error:  # noqa: BLE001 - each check reports its own failure; the others still run
            report["checks"][name] = {"ok": False, "detail": f"{type(error).__name__}: {error}",
                                      "where": traceback.format_exc(limit=3)}
    phases = {"classification": lambda: classification(device, films, seconds, (8,) if args.quick else (64, 256)),
              "segmentation": lambda: segmentation(device, films, seconds),
              "training": lambda: training(device, seconds, 8 if args.quick else 32),
              "batch_engine": lambda: batch_engine(device, 32 if args.quick else 2000)}
    for name, phase in phases.items():
        try:
            report[name] = phase()
        except Exception as error:  # noqa: BLE001
            report[name] = {"error": f"{type(error).__name__}: {error}", "where": traceback.format_exc(limit=3)}
    report["all_checks_pass"] = all(c["ok"] for c in report["checks"].values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
