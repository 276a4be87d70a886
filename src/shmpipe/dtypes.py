"""How a ring records its dtype in the header: a canonical text that rebuilds the dtype on
open(), and a fingerprint of that text that two sides compare."""
from __future__ import annotations

import ast
import hashlib

import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

from .errors import InvalidArgumentError


def as_record_dtype(dtype: object) -> np.dtype:
    """A fixed-size, object-free numpy dtype (InvalidArgumentError naming what is wrong otherwise)."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"not a numpy dtype: {dtype!r} ({exc})") from None
    if dt.hasobject:
        raise InvalidArgumentError(f"dtype {dt} holds Python objects; a shared-memory record must be plain bytes")
    if dt.itemsize == 0:
        raise InvalidArgumentError(f"dtype {dt} has no fixed size")
    if dt.subdtype is not None:
        raise InvalidArgumentError(f"dtype {dt} is a sub-array; wrap it in a structured dtype with a field name")
    return dt


def describe(dt: np.dtype) -> str:
    """Canonical text of a dtype (numpy's .npy header form: names, formats, padding)."""
    return repr(dtype_to_descr(dt))


def from_description(text: str) -> np.dtype:
    return descr_to_dtype(ast.literal_eval(text))


def fingerprint(dt: np.dtype) -> int:
    return int.from_bytes(hashlib.blake2b(describe(dt).encode(), digest_size=8).digest(), "little")
