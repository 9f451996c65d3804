"""Where a job's items live, for executors whose workers run on other hosts: a local path (a shared filesystem:
the engine reads it as it is) or a URI ``scheme://...`` (``s3://``, ``gs://``, ``hdfs://``, ``file://``...),
whose bytes a worker fetches into its scratch folder through ``pyarrow.fs`` or, for schemes pyarrow has no
filesystem for, ``fsspec``; the engine then reads that copy, so a URI's image decodes exactly as a local file.

A URI no reader can open fails its item alone, with the reason (and what to install), as an unreadable file
does; the job goes on.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: C:\ is a Windows path, not a scheme


def is_uri(source: str | None) -> bool:
    return bool(source) and URI.match(source) is not None


class MissingReader(Exception):
    """No installed library reads this URI's scheme."""


def read_uri(uri: str) -> bytes:
    """The bytes at ``uri``: through pyarrow.fs, else fsspec; :class:`MissingReader` when neither has the
    scheme (or neither is installed), OSError when the object cannot be read."""
    scheme = uri.split("://", 1)[0].lower()
    reasons = []
    try:
        from pyarrow import fs as arrow_fs
    except ImportError:
        reasons.append("pyarrow is not installed")
    else:
        try:
            filesystem, path = arrow_fs.FileSystem.from_uri(uri)
        except (ValueError, NotImplementedError, ImportError) as exc:  # ArrowInvalid is a ValueError
            reasons.append(f"pyarrow.fs: {exc}")
        else:
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
    try:
        import fsspec
    except ImportError:
        reasons.append("fsspec is not installed")
    else:
        try:
            opener = fsspec.open(uri, "rb")
        except (ValueError, ImportError) as exc:  # an unknown protocol, or its package (s3fs, gcsfs) missing
            reasons.append(f"fsspec: {exc}")
        else:
            with opener as stream:
                return stream.read()
    raise MissingReader(
        f"no reader for {scheme}:// URIs ({'; '.join(reasons)}); install one on every worker: pyarrow with "
        f"{scheme} support, or fsspec and its {scheme} package (s3fs for s3://, gcsfs for gs://)"
    )


class Scratch:
    """A worker's folder for fetched items: each fetched file keeps its URI's suffix (the decoders look at it)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="avala-infer-items-")
        self.path = Path(self._dir.name)
        self._names = itertools.count()  # next() of a count is atomic: fetches run on several threads

    def fetch(self, uri: str) -> Path:
        data = read_uri(uri)
        local = self.path / f"{next(self._names)}{Path(uri.split('?', 1)[0]).suffix.lower()}"
        local.write_bytes(data)
        return local

    def clear(self) -> None:
        for child in self.path.iterdir():
            child.unlink(missing_ok=True)

    def close(self) -> None:
        self._dir.cleanup()
