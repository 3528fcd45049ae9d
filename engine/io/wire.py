"""Plain data between the server and the decoder child: JSON plus raw byte blobs, never pickle.

The child decodes hostile files; if a codec bug ever let a file run code there, the child's answer must
still be only data to the server. So a message can hold None, booleans, numbers, strings, bytes, lists,
string-keyed dicts and numeric numpy arrays, and nothing that could become code or an arbitrary object
when read.

Layout: 8-byte JSON length, the JSON (blobs referenced by index), then the blobs back to back.
"""

from __future__ import annotations

import json
import struct

import numpy as np

__all__ = ["pack", "unpack", "WireError"]

_LENGTH = struct.Struct("<Q")
_ARRAY_KINDS = frozenset("biuf")  # bool, signed, unsigned, float: no object or structured dtypes


class WireError(ValueError):
    """A message that is not plain data, or is malformed."""


def pack(value) -> list[bytes]:
    """The message as parts to write in order (blobs are not copied into one buffer)."""
    blobs: list[bytes | memoryview] = []

    def encode(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (bytes, bytearray, memoryview)):
            blobs.append(v)
            return {"$bytes": len(blobs) - 1, "n": len(v)}
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in _ARRAY_KINDS:
                raise WireError(f"arrays of dtype {v.dtype} do not cross")
            data = np.ascontiguousarray(v)
            blobs.append(memoryview(data).cast("B"))
            return {"$array": len(blobs) - 1, "n": data.nbytes, "dtype": data.dtype.str, "shape": list(data.shape)}
        if isinstance(v, np.generic):
            return encode(v.item())
        if isinstance(v, (list, tuple)):
            return [encode(x) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"$dict": {k: encode(x) for k, x in v.items()}}
        raise WireError(f"a {type(v).__name__} is not plain data")

    head = json.dumps(encode(value)).encode()
    return [_LENGTH.pack(len(head)), head, *blobs]


def unpack(message: bytes | bytearray) -> object:
    view = memoryview(message)
    try:
        (length,) = _LENGTH.unpack(view[:_LENGTH.size])
        head = json.loads(bytes(view[_LENGTH.size:_LENGTH.size + length]))
    except (struct.error, ValueError) as exc:
        raise WireError(f"malformed message ({type(exc).__name__})") from None
    offset = _LENGTH.size + length
    blobs: dict[int, memoryview] = {}

    def blob(index: int, n: int) -> memoryview:
        nonlocal offset
        if index != len(blobs) or n < 0 or offset + n > len(view):
            raise WireError("a blob is out of order or past the end of the message")
        blobs[index] = view[offset:offset + n]
        offset += n
        return blobs[index]

    def decode(v):
        if isinstance(v, list):
            return [decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "$dict" in v:
            return {k: decode(x) for k, x in v["$dict"].items()}
        if "$bytes" in v:
            return bytes(blob(v["$bytes"], v["n"]))
        if "$array" in v:
            dtype = np.dtype(v["dtype"])
            if dtype.kind not in _ARRAY_KINDS:
                raise WireError(f"arrays of dtype {dtype} do not cross")
            data = blob(v["$array"], v["n"])
            return np.frombuffer(data, dtype=dtype).reshape(v["shape"])  # shares the message's buffer
        raise WireError("an unknown object in the message")

    try:
        return decode(head)
    except WireError:
        raise
    except (TypeError, KeyError, ValueError) as exc:
        raise WireError(f"malformed message ({type(exc).__name__})") from None
