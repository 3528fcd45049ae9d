"""The GAN training program: `python -m engine.train.gan --dataset cxr_pneumonia --epochs 250 ...`.

Trains the class-conditional GAN of engine/models/gan.py on the dataset's TRAINING split only (validation and
test images never reach it, so they stay fair references for the quality and memorisation checks). Like the
classifier's program it checkpoints every epoch (kill-safe `--resume`, or a job's resume) and writes:
  metrics.jsonl / progress.json   one line per epoch (discriminator and generator hinge losses, D's mean
                                  score on real and generated images, seconds)
  samples.png                     the EMA generator on fixed latents, rewritten every few epochs
  state.pt                        both networks, the EMA generator, optimizers, RNG state
  <name>.safetensors + .json      the EMA generator (fp16) and its card
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.config import Config
from engine.context import Context
from engine.data.loaders import load_dataset
from engine.errors import EngineError, TrainingDiverged
from engine.inference.predict import autocast
from engine.jobs.queue import get_job
from engine.jobs.synthesis import GanConfig, gan_parser
from engine.models.checkpoint import atomic_write, load_state, remove_stale_temps, save_model, save_state
from engine.models.device import choose_device
from engine.models.gan import GAN_ARCH, Discriminator, Generator, diff_augment
from engine.models.preprocess import Preprocessing
from engine.synthetic.generator import install_generator, sample_grid
from engine.train.progress import JobReporter
from engine.train.run import _hardware, _log, _seed, run_reported

__all__ = ["main", "cli", "run_job"]

_SAMPLES_EVERY = 5  # epochs between samples.png rewrites


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, m in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(m, 1 - decay)
        for e, m in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(m)


def _mode_seeking(images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """1 / (image distance / latent distance) over pairs (first half, second half) of one class (Mao et al. 2019,
    MSGAN): small when different latents give different images. Each image is standardised first, so the
    generator cannot buy diversity with brightness or contrast alone (DiffAugment makes the discriminator blind to
    those)."""
    flat = images.float().flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-3)
    half = len(flat) // 2
    ratio = (flat[:half] - flat[half:2 * half]).abs().mean(1) / (z[:half] - z[half:2 * half]).abs().mean(1)
    return 1 / (ratio.mean() + 1e-5)


def _write_samples(path: Path, ema: Generator, fixed: tuple[torch.Tensor, torch.Tensor]) -> None:
    grid = sample_grid(ema, *fixed)
    atomic_write(path, lambda tmp: tmp.write_bytes(cv2.imencode(".png", grid)[1].tobytes()))


def main(cfg: GanConfig, ctx: Context, job: JobReporter | None = None, resume: bool = False) -> dict:
    cfg = cfg.checked()
    started = time.time()
    out = cfg.output or ctx.config.home / "runs" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(choose_device(cfg.device))
    if job:
        job.device = device
        job.phase("loading the training split")
    splits = load_dataset(cfg.dataset, Preprocessing(size=cfg.size), ctx.config.data_dir, only=("train",))
    train = splits.sets["train"]
    images, labels = (train.images * 2 - 1).to(device), train.labels.to(device)
    order = _seed(cfg.seed)
    classes = len(splits.label_names)
    weights = (1.0 / torch.bincount(train.labels, minlength=classes).clamp(min=1).double())[train.labels]
    G = Generator(cfg.z_dim, classes, cfg.width, cfg.size).to(device)
    D = Discriminator(classes, cfg.d_width, cfg.size).to(device)
    ema = copy.deepcopy(G).eval()
    opt_g = torch.optim.Adam(G.parameters(), cfg.lr, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), cfg.d_lr, betas=(0.0, 0.9))
    fixed_gen = torch.Generator().manual_seed(cfg.seed + 7)
    fixed = (torch.randn(8 * classes, cfg.z_dim, generator=fixed_gen),
             torch.arange(classes).repeat_interleave(8))
    start = 0
    if resume and (out / "state.pt").is_file():
        state = load_state(out / "state.pt")
        for module, key in ((G, "generator"), (D, "discriminator"), (ema, "ema"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        order.set_state(state["order"])
        torch.set_rng_state(state["torch_rng"])
        start = state["epoch"] + 1
        started -= state.get("elapsed_s", 0.0)  # the card's wall time covers every segment of a resumed run
    steps = len(train) // cfg.batch_size
    for epoch in range(start, cfg.epochs):
        t0, sums = time.time(), np.zeros(4)
        if job:
            job.start_epoch(epoch)
        # Class-balanced draws (with replacement): each class is seen equally often, so the generator gets as
        # much signal for the minority class, the one synthetic images are meant for.
        drawn = torch.multinomial(weights, steps * cfg.batch_size, replacement=True, generator=order)
        for step in range(steps):
            idx = drawn[step * cfg.batch_size:(step + 1) * cfg.batch_size].to(device)
            real, y = images[idx], labels[idx]
            z = torch.randn(len(idx), cfg.z_dim, device=device)
            with autocast(device, cfg.precision):
                d_real = D(diff_augment(real), y)
                d_fake = D(diff_augment(G(z, y).detach()), y)
                loss_d = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # The generator's batch pairs latents within a class (y's first half twice) for the mode-seeking term:
            # a discriminator that judges one image at a time cannot see that every latent gives the same film,
            # and without it the generator collapsed to one image per class in two runs.
            y_g, z_g = y[:len(y) // 2].repeat(2), torch.randn_like(z)
            with autocast(device, cfg.precision):
                fake = G(z_g, y_g)
                loss_g = -D(diff_augment(fake), y_g).mean()
                if cfg.diversity:
                    loss_g = loss_g + cfg.diversity * _mode_seeking(fake, z_g)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            _ema_update(ema, G, cfg.ema)
            values = np.array([loss_d.item(), loss_g.item(), d_real.float().mean().item(),
                               d_fake.float().mean().item()])
            if not np.isfinite(values).all():
                raise TrainingDiverged(f"the GAN's losses became non-finite at step {step + 1} of epoch {epoch + 1}: "
                                       f"start again with a learning rate lower than {cfg.lr:g}")
            sums += values
            if job:
                job.step(epoch, cfg.epochs, step + 1, steps, float(values[0]), len(idx))
        if (epoch + 1) % _SAMPLES_EVERY == 0 or epoch + 1 == cfg.epochs:
            _write_samples(out / "samples.png", ema, fixed)
        means = sums / max(steps, 1)
        record = {"epoch": epoch, "epochs": cfg.epochs, "d_loss": round(means[0], 4), "g_loss": round(means[1], 4),
                  "d_real": round(means[2], 4), "d_fake": round(means[3], 4), "best_epoch": epoch,
                  "seconds": round(time.time() - t0, 1)}
        save_state(out / "state.pt", {"generator": G.state_dict(), "discriminator": D.state_dict(),
                                      "ema": ema.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                                      "order": order.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                                      "elapsed_s": time.time() - started})
        _log(out, record)
        if job:
            job.epoch(record, steps)
    card = {
        "name": cfg.name, "version": cfg.version, "task": "generation", "arch": GAN_ARCH, "labels": splits.label_names,
        "preprocessing": Preprocessing(size=cfg.size, mean=0.5, std=0.5).to_dict(),
        "model_args": {"z_dim": cfg.z_dim, "classes": classes, "width": cfg.width, "size": cfg.size},
        "data": {"dataset": cfg.dataset, "description": splits.description, "splits_used": ["train"],
                 "counts": splits.counts()},
        "training": {
            "command": cfg.command(), "epochs_run": cfg.epochs, "steps": cfg.epochs * steps, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "optimizer": f"Adam betas (0.0, 0.9): generator lr {cfg.lr:g}, "
                         f"discriminator lr {cfg.d_lr:g}",
            "sampling": "class-balanced (each class drawn equally often)",
            "discriminator_width": cfg.d_width,
            "diversity": f"mode-seeking term (MSGAN) on standardised images, weight {cfg.diversity:g}",
            "loss": "hinge; class-conditional (projection discriminator, spectral normalisation, minibatch "
                    "standard deviation)",
            "augmentation": "DiffAugment on real and generated images: brightness, contrast, translation <= 1/8, "
                            "cutout 1/2", "generator_weights": f"exponential moving average, decay {cfg.ema}",
            "precision": cfg.precision, "weights_dtype": "float16",
            "hardware": _hardware(device, 1), "wall_time_s": round(time.time() - started, 1)},
        "limitations": [
            f"{cfg.size} x {cfg.size} pixels: fine texture of a full-resolution film is not generated.",
            "Trained on the training split of one pediatric single-site dataset; synthetic images share its bias.",
            "A synthetic image is not a patient: it must never be read as a case (ingest refuses it)."],
    }
    weights = out / f"{cfg.name}.safetensors"
    save_model(weights, ema.cpu(), card, half=True)
    print(json.dumps({"weights": str(weights), "wall_time_s": card["training"]["wall_time_s"]}), flush=True)
    return card


def run_job(ctx: Context, job_id: int) -> None:
    job = get_job(ctx.store, job_id)
    cfg = GanConfig.from_dict(job.config["gan"])
    ctx = ctx.as_user(job.actor)

    def work(reporter: JobReporter | None) -> None:
        card = main(cfg, ctx, reporter, resume=True)
        reporter.finish(cfg.output / f"{card['name']}.safetensors", install=install_generator)

    run_reported(ctx, job_id, cfg, work)


def cli(argv: list[str] | None = None) -> dict | None:
    args = gan_parser().parse_args(argv)
    ctx = Context.open(Config.from_env())
    if args.job is not None:
        run_job(ctx, args.job)
        return None
    return main(GanConfig.from_dict(vars(args)), ctx, resume=args.resume)


if __name__ == "__main__":
    try:
        cli()
    except EngineError as error:
        sys.exit(f"error: {error}")
