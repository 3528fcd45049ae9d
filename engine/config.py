"""Configuration: frozen dataclasses, one per concern, built from the environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import TooLarge

__all__ = ["Limits", "Config"]


@dataclass(frozen=True)
class Limits:
    """Limits on what one upload may cost; exceeding any gives a TooLarge/UnsafeArchive error."""

    max_upload_mb: int = 512  # largest single file (or zip) accepted, in MiB
    max_pixels: int = 100_000_000  # rows x columns x frames of one image (Pillow's bomb check uses it too)
    max_frames: int = 2_000  # frames in one multi-frame DICOM
    max_zip_members: int = 5_000  # files inside one zip
    max_zip_total_mb: int = 4_096  # uncompressed bytes of one zip, all members together, in MiB
    max_zip_ratio: int = 200  # compression ratio above which a member counts as a zip bomb

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def check_upload(self, size: int) -> None:
        """Raise TooLarge when one file (or zip) of `size` bytes is over the upload limit."""
        if size > self.max_upload_bytes:
            raise TooLarge(f"file is {size / 2**20:,.1f} MiB; the limit is {self.max_upload_mb:,} MiB "
                           "(RADLENS_MAX_UPLOAD_MB)")

    @property
    def max_zip_total_bytes(self) -> int:
        return self.max_zip_total_mb * 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Where state lives and who is acting. Build with Config.from_env() at the edges only."""

    home: Path  # all state: radlens.db, files/, logs/, jobs/
    data_dir: Path | None  # read-only datasets (../shared/data); None when not present
    user: str = "demo-user"  # display name recorded in the audit log until authentication exists
    limits: Limits = field(default_factory=Limits)

    @property
    def db_path(self) -> Path:
        return self.home / "radlens.db"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        data = env.get("RADLENS_DATA_DIR")
        limits = Limits(
            max_upload_mb=int(env.get("RADLENS_MAX_UPLOAD_MB", Limits.max_upload_mb)),
            max_pixels=int(env.get("RADLENS_MAX_PIXELS", Limits.max_pixels)),
            max_frames=int(env.get("RADLENS_MAX_FRAMES", Limits.max_frames)),
        )
        return cls(
            home=Path(env.get("RADLENS_HOME", ".radlens")).resolve(),
            data_dir=Path(data).resolve() if data and Path(data).is_dir() else None,
            user=env.get("RADLENS_USER", cls.user),
            limits=limits,
        )
