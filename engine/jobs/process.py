"""Background processes (the job queue's training runs and heatmap audits): started detached from the caller,
watched by pid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from engine.config import Config

__all__ = ["start_process", "alive", "start_time"]

_ROOT = Path(__file__).resolve().parents[2]  # the repository root, so `-m engine...` imports


def start_process(config: Config, argv: list[str], log: Path, user: str | None = None) -> int:
    """Start argv in a new session (its own process group, so it outlives a dashboard restart and can be
    signalled as a group), output appended to `log`, with the caller's home and data folder; returns the pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RADLENS_HOME": str(config.home), "RADLENS_USER": user or config.user, "TQDM_DISABLE": "1",
           **({"RADLENS_DATA_DIR": str(config.data_dir)} if config.data_dir else {})}
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=_ROOT).pid


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int | None, started: float | None = None) -> bool:
    """Whether pid runs and, when `started` is known, is the process that started then: a pid reused by an
    unrelated process after a reboot or a crash is not the job. A finished child of this process is reaped
    first (else it lingers as a zombie)."""
    if not pid:
        return False
    if started is not None and (now := start_time(pid)) is not None and abs(now - started) > 1.0:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: only the kill(0) probe below applies
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
