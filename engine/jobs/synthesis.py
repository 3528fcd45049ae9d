"""The one definition of a GAN training run: `GanConfig` (the generator of synthetic minority images). Its
fields generate the program's command line (`python -m engine.train.gan`), the Synthetic data page fills it,
and a job row of kind "gan" stores it."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from engine.context import Context
from engine.data.loaders import DATASETS
from engine.errors import JobError
from engine.inference.predict import PRECISIONS
from engine.jobs.queue import job_folder, submit
from engine.jobs.training import argv_of, opt, parser_of
from engine.tasks import get_task

__all__ = ["GanConfig", "GAN_PROGRAM", "gan_parser", "submit_gan"]

GAN_PROGRAM = "engine.train.gan"


@dataclass(frozen=True)
class GanConfig:
    """Everything one GAN training run needs; trained on the dataset's training split only."""

    dataset: str = opt("a classification dataset of the catalogue (its training split is used)", "cxr_pneumonia",
                       choices=lambda: [n for n, d in DATASETS.items() if get_task(d.task).synthetic_images])
    size: int = opt("generated image side in pixels (4 x a power of two)", 64, type=int)
    width: int = opt("channels of the generator's full-resolution layers (doubling per halving)", 32, type=int)
    d_width: int = opt("channels of the discriminator's first layer (doubling per halving)", 48, type=int)
    z_dim: int = opt("length of the latent vector", 128, type=int)
    epochs: int = opt("passes over the training split", 250, type=int)
    batch_size: int = opt("images per step, drawn with equal probability per class (the minority class is not "
                          "drowned out)", 64, type=int)
    lr: float = opt("Adam learning rate of the generator (betas 0.0, 0.9)", 2e-4, type=float)
    d_lr: float = opt("Adam learning rate of the discriminator (two time-scale update rule: faster than the "
                      "generator's)", 4e-4, type=float)
    diversity: float = opt("weight of the mode-seeking term (Mao et al. 2019): the generator is rewarded for "
                           "different images from different latents of one class; 0 turns it off", 1.0, type=float)
    ema: float = opt("decay of the generator's exponential moving average (the weights that are shipped)", 0.999,
                     type=float)
    seed: int = opt("seed of shuffling, augmentation, latents and initialisation", 0, type=int)
    threads: int = opt("CPU threads (0: torch's default)", 0, type=int)
    device: str = opt("auto (CUDA when present), cpu or cuda", "auto", choices=lambda: ["auto", "cpu", "cuda"])
    precision: str = opt("training arithmetic: auto (fp16 on CUDA, fp32 on CPU) or bf16", "auto",
                         choices=lambda: list(PRECISIONS))
    name: str = opt("generator name", "cxr-pneumonia-gan")
    version: str = opt("generator version written into the card", "1.0.0")
    output: Path | None = opt("run folder (default: $RADLENS_HOME/runs/<name>)", type=Path)

    def checked(self) -> GanConfig:
        if self.dataset not in DATASETS or not get_task(DATASETS[self.dataset].task).synthetic_images:
            raise JobError(f"a GAN is trained on a classification dataset's training split; {self.dataset!r} is "
                           "not one")
        side = self.size
        while side > 4 and side % 2 == 0:
            side //= 2
        if side != 4 or self.size < 16:
            raise JobError(f"the image size must be 4 x a power of two, at least 16 (got {self.size})")
        for label, value, low in (("epochs", self.epochs, 1), ("batch size", self.batch_size, 2),
                                  ("width", self.width, 4),
                                  ("discriminator width", self.d_width, 4), ("latent length", self.z_dim, 2)):
            if value < low:
                raise JobError(f"{label} must be at least {low} (got {value})")
        if not (self.lr > 0 and self.d_lr > 0 and 0 <= self.ema < 1 and self.diversity >= 0):
            raise JobError(f"the learning rates must be positive, the EMA decay in [0, 1) and the diversity weight "
                           f"not negative (got {self.lr}, {self.d_lr}, {self.ema}, {self.diversity})")
        return self

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> GanConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("output"):
            values["output"] = Path(values["output"])
        return cls(**values)

    def command(self) -> str:
        return f"python -m {GAN_PROGRAM} " + shlex.join(argv_of(self))


def gan_parser():
    return parser_of(GanConfig, f"python -m {GAN_PROGRAM}", "Train a class-conditional GAN on a dataset's training "
                     "split and write the generator and its card")


def submit_gan(ctx: Context, cfg: GanConfig, start: bool = True) -> int:
    """Queue a GAN training job (audited); its run folder is the job's folder."""
    ctx.require("job.submit")
    cfg = cfg.checked()
    return submit(ctx, "gan", task="generation", config={"gan": cfg.to_dict()}, start=start,
                  detail={"dataset": cfg.dataset, "epochs": cfg.epochs},
                  complete=lambda job_id: {"config": {"gan": dataclasses.replace(
                      cfg, output=job_folder(ctx.config, job_id)).to_dict()}})
