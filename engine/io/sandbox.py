"""Decoding hostile files outside the serving process.

A file is decoded and de-identified by a child process (`python -m engine.io.sandbox`) whose address
space is capped (RLIMIT_AS) and whose answer must come within a time limit. A file that needs more
memory fails alone as TooLarge; one that hangs or crashes a codec fails alone as UnreadableStudy; the
child is replaced and the server, and the rest of the batch, carry on. The child is started once and
reused (about 0.5 s to start), one file at a time.

Protocol: the parent writes one request {"module", "name", "args"} to the child's stdin, the child answers
{"ok": value} or {"error": error class name, "message": ...}, each prefixed by its length. Messages are
plain data (engine.io.wire: JSON and byte blobs), never pickle: whatever happens inside the child, its
answer is read as data. Functions called this way take and return plain data.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib
import os
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine import errors
from engine.errors import EngineError, TooLarge, UnreadableStudy
from engine.io.wire import WireError, pack, unpack

__all__ = ["Sandbox", "sandbox_for", "close_all"]

_ROOT = Path(__file__).resolve().parents[2]
# What the decoder child inherits: enough to run Python and its libraries, nothing else. Not the keys
# (RADLENS_*_KEY), credentials (RADLENS_PACS_*), tokens (RAY_AUTH_TOKEN) or anything a hostile file could
# make a codec reveal.
_CHILD_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_HEADER = struct.Struct("<Q")
_READY = b"ready"
_START_SECONDS = 60.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Sandbox:
    """One reusable child process with a memory cap (bytes) and a time limit (seconds) per call; `preload`
    names modules the child imports before it says it is ready (so their import time is not decoding time)."""

    def __init__(self, memory_bytes: int, seconds: float, preload: tuple[str, ...] = ()):
        self.memory_bytes, self.seconds, self.preload = memory_bytes, seconds, preload
        self._child: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def call(self, function, *args):
        """function(*args) in the child (arguments and result: plain data); its EngineError is raised here."""
        request = pack({"module": function.__module__, "name": function.__qualname__, "args": list(args)})
        with self._lock:
            child = self._started()
            try:
                _send(child.stdin, request)
                answer = unpack(_receive(child.stdout, self.seconds))
            except TimeoutError:
                self.close()
                raise UnreadableStudy(f"decoding took longer than {self.seconds:g} s and was stopped "
                                      "(RADLENS_DECODE_SECONDS)") from None
            except (EOFError, OSError, WireError):
                self.close()
                raise UnreadableStudy("the decoder stopped on this file (out of memory or a codec crash); "
                                      "nothing was stored") from None
        if isinstance(answer, dict) and "ok" in answer:
            return answer["ok"]
        raise _error(answer)

    def _started(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "engine.io.sandbox", str(self.memory_bytes), *self.preload], cwd=_ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env={**{k: os.environ[k] for k in _CHILD_ENV if k in os.environ},
                     "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
            for pipe in (self._child.stdin, self._child.stdout):
                _widen(pipe)
            try:  # the time limit is for decoding, not for starting Python
                if _receive(self._child.stdout, _START_SECONDS) != _READY:
                    raise EOFError
            except (TimeoutError, EOFError, OSError):
                self.close()
                raise UnreadableStudy("the decoder process could not start") from None
        return self._child

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            for pipe in (self._child.stdin, self._child.stdout):
                pipe.close()
            self._child = None


def _widen(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: a 7 MB study crosses in 1/16 of the context switches."""
    try:
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default still works


def _error(answer) -> EngineError:
    """The child's error as the named EngineError it was; anything else as UnreadableStudy."""
    name, message = (answer.get("error"), answer.get("message")) if isinstance(answer, dict) else (None, None)
    kind = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(kind, type) and issubclass(kind, EngineError)):
        kind = UnreadableStudy
    return kind(str(message or "the decoder gave no reason")[:500])


def _send(pipe, parts: list) -> None:
    pipe.write(_HEADER.pack(sum(memoryview(p).nbytes for p in parts)))
    for part in parts:
        pipe.write(part)
    pipe.flush()


def _read_exactly(pipe, n: int, deadline: float | None) -> bytearray:
    """n bytes from the pipe, read straight into one buffer (no chunk list to join)."""
    buffer = bytearray(n)
    view, got, fd = memoryview(buffer), 0, pipe.fileno()
    while got < n:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - _now()))
            if not ready:
                raise TimeoutError
        count = os.readv(fd, [view[got:]])
        if not count:
            raise EOFError
        got += count
    return buffer


def _receive(pipe, seconds: float | None = None) -> bytes:
    deadline = None if seconds is None else _now() + seconds
    (length,) = _HEADER.unpack(_read_exactly(pipe, _HEADER.size, deadline))
    return _read_exactly(pipe, length, deadline)


def _now() -> float:
    return time.monotonic()


_SANDBOXES: dict[tuple, Sandbox] = {}
_SANDBOXES_LOCK = threading.Lock()


def sandbox_for(memory_bytes: int, seconds: float, preload: tuple[str, ...] = ()) -> Sandbox:
    """The process-wide sandbox for these limits (started on first use)."""
    key = (memory_bytes, seconds, preload)
    with _SANDBOXES_LOCK:
        if key not in _SANDBOXES:
            _SANDBOXES[key] = Sandbox(memory_bytes, seconds, preload)
        return _SANDBOXES[key]


@atexit.register
def close_all() -> None:
    """Stop every sandbox child of this process (also run at exit)."""
    with _SANDBOXES_LOCK:
        for sandbox in _SANDBOXES.values():
            sandbox.close()


def _serve(memory_bytes: int, preload: list[str]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print in a library must not corrupt the protocol
    for module in preload:
        importlib.import_module(module)
    _send(stdout, [_READY])
    while True:
        try:
            request = unpack(_receive(stdin))
        except EOFError:
            return
        try:
            function = importlib.import_module(request["module"])
            for part in request["name"].split("."):
                function = getattr(function, part)
            message = pack({"ok": function(*request["args"])})
        except MemoryError:
            message = _failure(TooLarge(f"decoding this file needs more than the {memory_bytes / 2**20:,.0f} MiB "
                                        "a decoder may use (RADLENS_DECODE_MEMORY_MB)"))
        except EngineError as error:
            message = _failure(error)
        except BaseException as exc:  # noqa: BLE001 - any codec failure is this file's failure
            message = _failure(UnreadableStudy(f"the file could not be decoded ({type(exc).__name__})"))
        _send(stdout, message)


def _failure(error: EngineError) -> list:
    return pack({"error": type(error).__name__, "message": str(error)})


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2:])
