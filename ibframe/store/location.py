"""Where a run store or a results file lives: a local path, or an fsspec URL with its options.

A :class:`Location` is what every part of ibframe that touches storage takes: the store
(``create_run``, ``open_run``, the cache, the engine's tasks on any worker) and the results
files. A local path gives zarr's ``LocalStore``; a URL (``s3://bucket/prefix/run.zarr``,
``gs://...``, ``memory://...``, any fsspec protocol) gives zarr's ``FsspecStore``, with
``storage_options`` handed to fsspec (``endpoint_url``, ``key``, ``secret``, ``profile``...).
Credentials not given there come from where the protocol's library looks: for S3, the
``AWS_*`` environment variables and the AWS config files.

``storage_options`` may hold secrets: a Location prints, and ibframe records, only its URL,
never its options. It is picklable, so a dask worker opens the store itself, by URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zarr.abc.store import Store
from zarr.core.sync import collect_aiterator, sync
from zarr.storage import FsspecStore, LocalStore

from ibframe.errors import (
    IbframeError,
    ParameterError,
    StoreAccessError,
    StoreError,
    StoreNotFoundError,
    StoreUnreachableError,
)

Where = str | os.PathLike[str]
#: The names that connection failures go by in the builtins, botocore and aiohttp.
_CONNECTION_ERRORS = frozenset(
    {"ConnectionError", "ClientConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
     "EndpointConnectionError", "ServerTimeoutError", "TimeoutError"}
)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Location:
    """A local path or a URL, with the fsspec ``storage_options`` for a URL.

    Build one with :meth:`of`. ``str()`` gives the path or URL (never the options).
    """

    url: str
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    local: Path | None = None

    @classmethod
    def of(
        cls, where: Where | Location, storage_options: Mapping[str, Any] | None = None
    ) -> Location:
        """The location of ``where``: a path, a URL (``s3://``, ``memory://``...) or a Location.

        ``file://`` URLs are local paths. ``storage_options`` apply to URLs only.
        """
        if isinstance(where, Location):
            if storage_options is None:
                return where
            where = where.url if where.local is None else where.local
        if not isinstance(where, str | os.PathLike):
            msg = f"a store location is a path or a URL, got {type(where).__name__}"
            raise ParameterError(msg)
        text = os.fspath(where)
        if isinstance(where, str) and text.startswith("file://"):
            text = text.removeprefix("file://")
        elif isinstance(where, str) and "://" in text:
            return cls(text.rstrip("/"), dict(storage_options or {}))
        if storage_options:
            msg = f"storage options apply to URLs (s3://...), not to the local path {text}"
            raise ParameterError(msg)
        return cls(text, {}, Path(text))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        keys = sorted(self.storage_options)
        return f"Location({self.url!r}" + (f", storage_options keys {keys})" if keys else ")")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Location)
            and self.url == other.url
            and dict(self.storage_options) == dict(other.storage_options)
        )

    __hash__ = None  # type: ignore[assignment]  # the options are a mutable mapping

    @property
    def name(self) -> str:
        """The last part of the path or URL (``run.zarr``)."""
        return self.local.name if self.local is not None else self.url.rsplit("/", 1)[-1]

    @property
    def protocol(self) -> str:
        """``"file"`` for a local path, else the URL's scheme (``s3``, ``memory``...)."""
        return "file" if self.local is not None else self.url.split("://", 1)[0]

    def absolute(self) -> str:
        """The path made absolute, or the URL: what results record as their source."""
        return str(self.local.absolute()) if self.local is not None else self.url

    def child(self, name: str) -> Location:
        """The location of ``name`` inside this one."""
        if self.local is not None:
            return Location(str(self.local / name), {}, self.local / name)
        return Location(f"{self.url}/{name}", self.storage_options)

    def store(self, read_only: bool = True) -> Store:
        """A zarr store rooted here: ``LocalStore`` for a path, ``FsspecStore`` for a URL."""
        if self.local is not None:
            return LocalStore(self.local, read_only=read_only)
        with storage_errors(self):
            try:
                return FsspecStore.from_url(
                    self.url, storage_options=dict(self.storage_options), read_only=read_only
                )
            except (ImportError, ValueError) as err:
                msg = f"cannot open {self.url}: {_brief(err)}"
                if isinstance(err, ImportError) or "Protocol not known" in str(err):
                    msg += (f" (install the fsspec backend for {self.protocol}://; for S3: "
                            "pip install 'ibframe[s3]')")
                raise StoreError(msg) from None

    def names(self, store: Store | None = None) -> list[str]:
        """The names directly inside (an empty list if nothing is there)."""
        store = store or self.store()
        with storage_errors(self):
            return list(collect_aiterator(store.list_dir("")))

    def check_container(self, store: Store | None = None) -> None:
        """Raise :class:`StoreNotFoundError` if the bucket (or container) of a URL is missing.

        Object stores have no directories: an absent prefix is empty, while a missing bucket
        is an error of its own, told apart here by asking for the bucket.
        """
        if self.local is not None:
            return
        store = store or self.store()
        fs = store.fs  # type: ignore[attr-defined]
        split = getattr(fs, "split_path", None)
        if split is None:
            return
        bucket = split(store.path)[0]  # type: ignore[attr-defined]
        with storage_errors(self):
            exists = sync(fs._exists(bucket))
        if not exists:
            msg = (f"bucket {bucket} of {self.url} does not exist (or is not visible with these "
                   "credentials)")
            raise StoreNotFoundError(msg)


def storage_error(err: BaseException, where: Location | str) -> IbframeError | None:
    """The one-line ibframe error for a storage failure (denied, unreachable), else None."""
    if isinstance(err, IbframeError):
        return None
    names = {cls.__name__ for cls in type(err).__mro__}
    if "NoCredentialsError" in names:
        return StoreAccessError(
            f"no credentials found for {where}: set them in the environment (AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE...), the AWS config, or storage options key/secret/profile"
        )
    if isinstance(err, PermissionError):
        return StoreAccessError(
            f"access to {where} was denied ({_brief(err)}); check the credentials "
            "(environment, AWS config, or storage options key/secret/profile)"
        )
    if names & _CONNECTION_ERRORS:
        return StoreUnreachableError(
            f"cannot reach the storage of {where} ({_brief(err)}); check the endpoint_url "
            "and the network"
        )
    return None


@contextlib.contextmanager
def storage_errors(where: Location | str) -> Iterator[None]:
    """Turn a denied access or an unreachable endpoint inside into its one-line ibframe error."""
    try:
        yield
    except Exception as err:
        translated = storage_error(err, where)
        if translated is None:
            raise
        raise translated from None


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
