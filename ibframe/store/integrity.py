"""Reading a run store without ever taking damage for data.

Zarr fills a missing chunk with the array's fill value and reads a garbled one as whatever it
decodes to. Here every read of a store's arrays goes through an :class:`ArrayReader`, which
checks that the chunks it covers exist and turns a chunk that fails to
decode (the CRC-32C codec catches truncation and bit rot) into a :class:`StoreError` naming the
store, the array and the epoch. :func:`open_node` does the same for metadata, and
:func:`inspect` tells a run from a half-created store, an empty directory or something foreign.

Everything goes through zarr's store API (``exists``, ``get``, ``list_dir``), not the file
system, so that it works unchanged on object stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import collect_aiterator, sync

from ibframe.errors import StoreError
from ibframe.store.layout import CREATING
from ibframe.store.lock import LOCK_NAME

Selection = tuple[int | slice, ...]
#: What zarr and its codecs raise on a chunk that does not decode (checksum mismatch, a truncated
#: zstd frame, a decoded size that does not fit the chunk).
_DECODE_ERRORS = (ValueError, RuntimeError, TypeError, OSError, zarr.errors.BaseZarrError)


def damaged(where: str, what: str) -> StoreError:
    """The one-line error for a damaged store."""
    return StoreError(f"run store {where} is damaged: {what}")


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# -- what is at a path ----------------------------------------------------------------------------

State = Literal["empty", "run", "half-created", "foreign", "unreadable"]


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What a store holds: its state, its root attributes, and a reason when foreign/unreadable."""

    state: State
    attrs: dict[str, Any]
    reason: str = ""


def is_leftover(name: str) -> bool:
    """The writer lock, or a temporary file of a write that was killed (zarr's LocalStore)."""
    return name == LOCK_NAME or name.endswith(".partial")


def inspect(store: Store) -> Inspection:
    """Classify an existing store from its root metadata alone.

    It lists the root before reading ``zarr.json``: a creator writes ``zarr.json`` first and
    never removes it, so a listing with names but no ``zarr.json`` afterwards is not a store
    being created meanwhile.
    """
    names = [n for n in collect_aiterator(store.list_dir("")) if not is_leftover(n)]
    if not names:
        return Inspection("empty", {})
    raw = sync(store.get("zarr.json", prototype=default_buffer_prototype()))
    if raw is None:
        v2 = ".zgroup" in names or ".zattrs" in names
        reason = "a Zarr format 2 group" if v2 else "no zarr.json at its root"
        return Inspection("foreign", {}, reason)
    try:
        meta = json.loads(raw.to_bytes())
    except ValueError as err:
        return Inspection("unreadable", {}, f"its root metadata (zarr.json) is unreadable ({_brief(err)})")
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or meta.get("node_type") != "group":
        return Inspection("foreign", {}, "its root zarr.json is not a Zarr v3 group")
    if meta.get("zarr_format") != 3:
        return Inspection("foreign", {}, f"Zarr format {meta.get('zarr_format')!r}, not 3")
    if "ibframe_format" in attrs:
        return Inspection("run", attrs)
    if CREATING in attrs:
        return Inspection("half-created", attrs)
    return Inspection("foreign", attrs, "a Zarr group without ibframe_format")


def child_names(store: Store, prefix: str = "") -> list[str]:
    """The names directly under ``prefix`` (groups, arrays, other objects)."""
    return list(collect_aiterator(store.list_dir(prefix)))


def remove_children(store: Store, keep: Sequence[str]) -> None:
    """Delete everything at the root of ``store`` except the names in ``keep``."""
    for name in child_names(store):
        if name in keep:
            continue
        with contextlib.suppress(ValueError):  # LocalStore: a file, not a directory
            sync(store.delete_dir(name))
        sync(store.delete(name))


# -- metadata ---------------------------------------------------------------------------------------


def open_node(root: zarr.Group, path: str, where: str) -> zarr.Array | zarr.Group:
    """The group or array at ``path``, or a :class:`StoreError` saying it is missing or unreadable."""
    try:
        return root[path]
    except (KeyError, ValueError, TypeError, AttributeError, zarr.errors.BaseZarrError) as err:
        exists = sync(root.store.exists(f"{_join(root.path, path)}/zarr.json"))
        if not exists:
            raise damaged(where, f"{path} is missing") from None
        raise damaged(where, f"the metadata of {path} (zarr.json) is unreadable ({_brief(err)})") from None


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


# -- data -------------------------------------------------------------------------------------------


def _chunk_ranges(array: zarr.Array, selection: Selection) -> list[range]:
    """The chunk indices along each axis that ``selection`` (ints and unit-step slices) covers."""
    ranges = []
    for axis, (size, chunk) in enumerate(zip(array.shape, array.chunks, strict=True)):
        key = selection[axis] if axis < len(selection) else slice(None)
        if isinstance(key, slice):
            start, stop, _ = key.indices(size)
        else:
            start = int(key) + (size if key < 0 else 0)
            stop = start + 1
        ranges.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
    return ranges


@dataclasses.dataclass(frozen=True)
class ArrayReader:
    """Checked reads of one array: every chunk read must decode and, if ``complete``, exist.

    zarr reads a missing chunk as the fill value, so a result that holds no fill value read no
    missing chunk; only one that does costs a look at which chunks exist. ``complete`` is False
    for arrays that may legitimately lack chunks (format 1 skipped chunks equal to the fill
    value). ``epochs`` maps positions along a leading ``epoch`` axis to epoch numbers for
    messages (None for arrays without one). Picklable, so dask can ship it.
    """

    array: zarr.Array
    name: str
    where: str
    epochs: tuple[int, ...] | None
    complete: bool

    def _epoch_note(self, position: int | None) -> str:
        if self.epochs is None or position is None:
            return ""
        epoch = self.epochs[position] if position < len(self.epochs) else f"#{position}"
        return f" at epoch {epoch}"

    def check_chunks(self, selection: Selection) -> None:
        """Refuse a selection that covers a chunk that does not exist (zarr would fill it)."""
        coords = list(itertools.product(*_chunk_ranges(self.array, selection)))
        if not coords:
            return
        prefix = self.array.path
        keys = [f"{prefix}/{self.array.metadata.encode_chunk_key(c)}" for c in coords]
        found = sync(_exist_all(self.array.store, keys))
        for c, key, ok in zip(coords, keys, found, strict=True):
            if not ok:
                position = c[0] if self.epochs is not None else None
                raise damaged(
                    self.where,
                    f"{self.name} has no chunk{self._epoch_note(position)} ({key} is missing)",
                )

    def __getitem__(self, selection: Selection | int | slice) -> npt.NDArray[Any]:
        if not isinstance(selection, tuple):
            selection = (selection,)
        try:
            values = np.asarray(self.array[selection])
        except _DECODE_ERRORS as err:
            position = self._first_bad_row(selection)
            raise damaged(
                self.where,
                f"{self.name}{self._epoch_note(position)} cannot be decoded ({_brief(err)})",
            ) from None
        if self.complete and _holds(values, self.array.fill_value):
            self.check_chunks(selection)
        return values

    def _first_bad_row(self, selection: Selection) -> int | None:
        """After a failed read: the first epoch position in ``selection`` whose chunks fail."""
        if self.epochs is None:
            return None
        rows = _chunk_ranges(self.array, selection)[0]
        step = self.array.chunks[0]
        for chunk_row in rows:
            try:
                self.array[chunk_row * step : (chunk_row + 1) * step]
            except _DECODE_ERRORS:
                return chunk_row * step
        return None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.array.shape)


def _holds(values: npt.NDArray[Any], fill: Any) -> bool:
    """Whether ``values`` contain the fill value ``fill`` anywhere (NaN included)."""
    if values.dtype.kind in "fc" and np.isnan(fill):
        return bool(np.isnan(values).any())
    return bool((values == fill).any())


async def _exist_all(store: Store, keys: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(store.exists(k) for k in keys)))
