"""What a run store's format fixes: version numbers, names, reserved attributes, chunks, codecs.

Also the checks that keep values out of a store before anything is written: names that are safe
as path components on every file system and object store, root attributes that are JSON, and
arrays of real numbers.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from zarr.codecs import Crc32cCodec, ZstdCodec

from ibframe.errors import ActivationError, StoreError

#: The format this ibframe writes. 2 added checksums, every chunk written, the commit marker and
#: the committed metric and parameter names; see docs/store-format.md.
FORMAT: typing.Final = 2
#: The formats this ibframe reads (and appends to, in their own format).
READABLE_FORMATS: typing.Final = (1, 2)

#: How a layer's T follows from its recorded S (the layer attribute ``noise``): "additive",
#: T = S + Z with Z ~ N(0, beta^2 I); "before-pooling", T = pool(U + Z) where S = pool(U), which is
#: not S + Gaussian noise; "none", T = S (no noise after the layer, or a deterministic run).
NoiseRelation = Literal["additive", "before-pooling", "none"]
NOISE_RELATIONS: typing.Final = typing.get_args(NoiseRelation)


def default_noise_relation(beta: float) -> NoiseRelation:
    """The ``noise`` of a layer that does not say (stores before the attribute): S + Z if noisy."""
    return "additive" if beta > 0 else "none"


#: Root attribute of a store whose ``create_run`` has not finished. It is replaced, in one write,
#: by the full root attributes (``ibframe_format`` among them) once every group and array exists.
CREATING: typing.Final = "ibframe_creating"
#: Root attributes ibframe sets; user ``attrs`` may not use them, nor any name starting "ibframe_".
RESERVED_ATTRS: typing.Final = frozenset(
    {"ibframe_format", "ibframe_version", CREATING, "created", "beta", "noise", "draws", "layers",
     "epochs", "metrics", "params", "model", "dataset", "seed"}
)

#: Every array ibframe writes: zstd, then a CRC-32C of the compressed chunk, so that a truncated
#: or garbled chunk fails to decode instead of reading as other numbers.
CODECS: typing.Final = (ZstdCodec(level=0), Crc32cCodec())
#: Write every chunk, even one equal to the fill value, so that a missing chunk is always damage.
ARRAY_CONFIG: typing.Final = {"write_empty_chunks": True}

_CHUNK_BYTES: typing.Final = 8 * 2**20
_NAME: typing.Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
NAME_RULE: typing.Final = (
    "1-200 characters among A-Z a-z 0-9 _ . -, not starting with '.', '-' or '__', "
    "and not 'zarr.json'"
)


def ibframe_version() -> str:
    """The running ibframe's version, for the root attributes and messages."""
    from ibframe import __version__

    return __version__


def check_name(kind: str, name: object, error: type[Exception] = StoreError) -> str:
    """``name`` if it is a safe layer/metric/parameter name (one path component), else refuse."""
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or name.startswith("__")
        or name == "zarr.json"
    ):
        msg = f"invalid {kind} name {name!r}: use {NAME_RULE}"
        raise error(msg)
    return name


def check_names(kind: str, names: Sequence[str], error: type[Exception] = StoreError) -> None:
    """Every name valid, and no two equal or differing only in case (one directory on macOS)."""
    seen: dict[str, str] = {}
    for name in names:
        check_name(kind, name, error)
        other = seen.setdefault(name.lower(), name)
        if other != name:
            msg = f"{kind} names {other!r} and {name!r} differ only in case; rename one"
            raise error(msg)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as plain Python numbers and lists, for ``json.dumps``."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    msg = f"{type(value).__name__} is not JSON"
    raise TypeError(msg)


def json_value(what: str, value: Any) -> Any:
    """``value`` as plain JSON (numpy numbers converted), or refuse it before anything is written."""
    try:
        text = json.dumps(value, default=_jsonable, allow_nan=False)
    except ValueError as err:
        msg = f"{what} holds NaN or infinity, which JSON cannot store; use None or a string"
        raise StoreError(msg) from err
    except TypeError as err:
        msg = f"{what} must be JSON-serialisable (numbers, strings, lists, string-keyed dicts): {err}"
        raise StoreError(msg) from err
    if not _string_keys(value):
        msg = f"{what} must be JSON-serialisable: the keys of its dicts must be strings"
        raise StoreError(msg)
    return json.loads(text)


def _string_keys(value: Any) -> bool:
    """Whether every dict inside ``value`` has string keys (json.dumps would convert others)."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_string_keys(v) for v in value)
    return True


def user_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """User root attributes as JSON, refusing reserved keys."""
    attrs = dict(attrs or {})
    clash = sorted(str(k) for k in attrs if k in RESERVED_ATTRS or str(k).startswith("ibframe_"))
    if clash:
        msg = (
            f"attrs use reserved root attribute(s) {clash}; ibframe sets "
            f"{sorted(RESERVED_ATTRS)} and every name starting 'ibframe_' itself"
        )
        raise StoreError(msg)
    return typing.cast(dict[str, Any], json_value("attrs", attrs))


def real_array(what: str, values: Any, error: type[Exception] = ActivationError) -> npt.NDArray[Any]:
    """``values`` as a numpy array of real numbers (bool, integer or float), else refuse."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as err:  # ragged nested lists
        msg = f"{what} must be a rectangular array of real numbers ({err})"
        raise error(msg) from None
    if array.dtype.kind not in "biuf":
        kind = {"c": "complex", "U": "str", "S": "bytes", "O": "object"}.get(
            array.dtype.kind, str(array.dtype)
        )
        msg = f"{what} must hold real numbers, got {kind} values ({array.dtype})"
        raise error(msg)
    return array


def check_finite(what: str, values: npt.NDArray[Any]) -> None:
    """Refuse NaN and infinity, which would also read like a missing value."""
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        msg = f"{what} holds {bad} NaN/inf value(s); nothing was written"
        raise ActivationError(msg)


def chunks(shape: Sequence[int], itemsize: int = 4) -> tuple[int, ...]:
    """Chunks of one epoch each, splitting the last (unit) axis to stay near 8 MiB."""
    per_unit = itemsize * math.prod(shape[1:-1])
    units = shape[-1]
    unit_chunk = max(1, min(units, _CHUNK_BYTES // max(per_unit, 1)))
    return (1, *shape[1:-1], unit_chunk)


def summarise_epochs(epochs: npt.NDArray[np.int64]) -> str:
    """A short description of a list of epochs for messages, to follow the word "epochs": all
    of them, or the span and count ("0 to 1332 (170 in all)")."""
    if epochs.size == 0:
        return "none"
    if epochs.size <= 8:
        return ", ".join(map(str, epochs.tolist()))
    return f"{epochs[0]} to {epochs[-1]} ({epochs.size} in all)"
