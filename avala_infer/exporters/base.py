"""What every writer shares: the sink protocol, the paths made from item keys, and small helpers for atomic,
streaming files."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

from avala_infer.annotations import Prediction
from avala_infer.errors import ConfigError

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Consumes predictions one at a time; ``close`` finishes the files and returns their paths; ``abort`` (on
    an error) closes what is open and removes the temporary files, leaving no half-written output behind."""

    def write(self, prediction: Prediction) -> None: ...

    def close(self) -> list[Path]: ...

    def abort(self) -> None: ...


def abort_sinks(sinks: Iterable[object]) -> None:
    """Abort every sink (``close`` for one without ``abort``); a sink that fails to abort does not stop the rest."""
    for sink in sinks:
        try:
            stop = getattr(sink, "abort", None) or sink.close
            stop()
        except Exception:  # we are already handling the error that made us abort: log this one, go on
            log.exception("could not abort %s", type(sink).__name__)


@contextlib.contextmanager
def aborting_on_error(sinks: list) -> Iterator[None]:
    """Run the block; if it raises, abort every sink in ``sinks`` (as it is then) and re-raise."""
    try:
        yield
    except BaseException:
        abort_sinks(sinks)
        raise


def close_sinks(sinks: list) -> list[Path]:
    """Close every sink in order and return their files; if one fails to close, abort the others, re-raise."""
    files: list[Path] = []
    for i, sink in enumerate(sinks):
        try:
            files += sink.close()
        except BaseException:
            abort_sinks([sink, *sinks[i + 1 :]])
            raise
    return files


def remove_quietly(*paths: Path | str) -> None:
    """Delete ``paths`` where they exist (temporary files of an aborted writer)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 200  # file systems allow 255 bytes a name; room for a _N suffix and a new extension


def _short(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix) > 16:
        stem, suffix = name, ""
    keep = MAX_NAME_BYTES - len(suffix.encode("utf-8")) - 1
    stem = stem.encode("utf-8")[:keep].decode("utf-8", "ignore")
    return f"{stem}.{suffix}" if suffix else stem


def _safe_parts(key: str) -> list[str]:
    """The parts of :func:`safe_relative_path` (``["unnamed"]`` for an empty result), as plain strings."""
    text = _UNSAFE_CHARS.sub("_", str(key)).replace("\\", "/")
    text = _DRIVE.sub("", text)
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(_short(part))
    return parts or ["unnamed"]


def safe_relative_path(key: str) -> PurePosixPath:
    """The relative path an item key stands for under an output folder, which can never leave it.

    Backslashes count as separators, a drive (``C:``) and leading ``/`` are dropped, ``.`` parts are removed
    and ``..`` steps up only as far as the top (``a/../../b.jpg`` -> ``b.jpg``, ``../../x.jpg`` -> ``x.jpg``);
    control characters (NUL included) become ``_`` and names are cut to 200 bytes. Sub-folders inside are
    kept: ``sub/a.jpg`` stays ``sub/a.jpg``. An empty result is ``unnamed``.
    """
    return PurePosixPath(*_safe_parts(key))


def with_suffix(name: str, suffix: str) -> str:
    """``name`` with its extension replaced by ``suffix``, or ``suffix`` added when it has none: pathlib's rule
    (``a.jpg`` -> ``a.txt``, ``.bashrc`` -> ``.bashrc.txt``, ``a.`` -> ``a..txt``), on a plain string."""
    dot = name.rfind(".")
    return name[:dot] + suffix if 0 < dot < len(name) - 1 else name + suffix


def suffix_of(path: str) -> str:
    """The extension of ``path``'s last part, as ``PurePath.suffix`` gives it (``""`` for none)."""
    name = path.rstrip("/").rpartition("/")[2]
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class PathAllocator:
    """Gives each item key its own file under ``root``: :func:`safe_relative_path`, made unique.

    Two keys that come out as the same path (``a.jpg`` and ``./a.jpg``; ``a.jpg`` and ``a.png`` once the
    extension is replaced) do not overwrite each other: the later one gets ``_1``, ``_2``... before its
    extension, as imports name duplicate keys. A name already taken as a folder (or a folder already taken as
    a file) gets the suffix too. Memory: one entry per file written, as the writers' own outputs are. Paths are
    kept as ``/``-joined strings (no path object per item: writers allocate one per item).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: set[str] = set()
        self._folders: set[str] = set()

    def allocate(self, key: str, suffix: str | None = None, companion: str | None = None) -> Path:
        """The unique path for ``key`` under ``root`` (its extension replaced by ``suffix`` if given).

        ``companion``: another extension the same stem will be written with elsewhere under the same layout
        (YOLO's image link beside its label file); that name is kept free of clashes too.
        """
        return self.root / self.allocate_relative(key, suffix, companion)

    def allocate_relative(self, key: str, suffix: str | None = None, companion: str | None = None) -> str:
        """:meth:`allocate`'s path relative to ``root``, ``/``-joined."""
        parts = _safe_parts(key)
        if suffix is not None:
            parts[-1] = with_suffix(parts[-1], suffix)
        parent = ""
        for part in parts[:-1]:  # folders: not a name some file already has
            parent = _join(parent, self._free(parent, part, (self._files,), None))
        name = self._free(parent, parts[-1], (self._files, self._folders), companion)
        path = _join(parent, name)
        self._files.add(path)
        if companion is not None:
            self._files.add(_join(parent, with_suffix(name, companion)))
        while parent and parent not in self._folders:  # its ancestors are in already when it is
            self._folders.add(parent)
            parent = parent.rpartition("/")[0]
        return path

    @staticmethod
    def _free(parent: str, name: str, taken: tuple[set[str], ...], companion: str | None) -> str:
        def clash(candidate: str) -> bool:
            paths = [_join(parent, candidate)]
            if companion is not None:
                paths.append(_join(parent, with_suffix(candidate, companion)))
            return any(path in names for path in paths for names in taken)

        if not clash(name):
            return name
        stem, dot, suffix = name.rpartition(".")
        if not dot or not stem:
            stem, suffix = name, ""
        n = 1
        while True:
            candidate = f"{stem}_{n}.{suffix}" if suffix else f"{stem}_{n}"
            if not clash(candidate):
                return candidate
            n += 1


class Folders:
    """Makes folders (with their parents) once: a writer that puts each item's file under a sub-folder asks for
    it per item, and the file system is asked once per folder. A folder removed during the run is not made
    again: the next file written there fails, as any write into a vanished output folder does."""

    def __init__(self) -> None:
        self._made: set[str] = set()

    def make(self, folder: str) -> None:
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)


def write_bytes_atomic(path: Path | str, data: bytes) -> Path | str:
    """Write ``data`` to ``path`` through ``path.tmp`` and a rename: a crash or a failed write (a full disk) leaves
    the earlier file or none, never half of one (per-item files: YOLO labels, mask PNGs).

    Whole-or-nothing needs only the rename (atomic in the folder: a reader, or the next run, sees the old name's
    file or the new one) and the removal of ``.tmp`` on an error. There is no fsync, per file or at the end: it
    would cost a disk flush per item (milliseconds) and buys only survival of a power cut or a kernel crash, which
    no output of a run promises (an interrupted run is run again); ext4 (``auto_da_alloc``) and most file systems
    flush a file renamed over an older one before the rename anyway. Raw ``os`` calls, no file object: this runs
    once per item."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # as open(tmp, "wb"): 0o666 less umask
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


def write_text_atomic(path: Path | str, text: str) -> Path | str:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: object) -> Path:
    """Write JSON to ``path`` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


class PartFile:
    """A text file written as ``<path>.part`` and renamed to ``path`` by :meth:`finish`, so a run that fails (or
    :meth:`abort`) leaves no half file under the final name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".part")
        self._file = self._tmp.open("w", encoding="utf-8")

    def write(self, text: str) -> None:
        self._file.write(text)

    def finish(self) -> list[Path]:
        try:
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return [self.path]

    def abort(self) -> None:
        self._file.close()
        remove_quietly(self._tmp)


class FailureLog:
    """``failures.jsonl``: one line per failed item (source, key, reason); created only when one fails."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "failures.jsonl"
        self.count = 0
        self._file = None

    def write(self, prediction: Prediction) -> None:
        if prediction.ok:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        record = {
            "index": prediction.index,
            "source": prediction.source,
            "key": prediction.key,
            "error": prediction.error,
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1

    def abort(self) -> None:
        """Close the list: the failures seen so far stay recorded."""
        if self._file is not None:
            self._file.close()

    def close(self) -> list[Path]:
        if self._file is None:
            if self.path.exists():  # a stale list from an earlier run into the same folder
                self.path.unlink()
            return []
        self._file.close()
        return [self.path]


# What a labeling run writes at the top of its output folder (every format, the summary, the failure list, the
# previews, and the temporary files of a run that died): what `overwrite` removes, and what makes a folder "used".
OUTPUT_PATTERNS = ("annotations.*", "labelstudio*", "summary.json*", "failures.jsonl*", "yolo", "masks", "preview")
LOCK_NAME = ".avala-infer.lock"


def earlier_outputs(folder: Path) -> list[Path]:
    """The outputs of earlier runs in ``folder`` (names matching ``OUTPUT_PATTERNS``), sorted; other files are
    not ours and never count."""
    return sorted(p for p in folder.iterdir() if any(fnmatch.fnmatchcase(p.name, pat) for pat in OUTPUT_PATTERNS))


def remove_outputs(paths: Iterable[Path]) -> None:
    """Delete earlier outputs: folders with what they hold (YOLO's image links are removed, not followed)."""
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            reason = exc.strerror or exc
            raise ConfigError(f"cannot remove {path} of an earlier run: {reason}; remove it by hand") from exc


class FolderLock:
    """One run at a time in an output folder: ``fcntl.flock`` on ``FOLDER/.avala-infer.lock``, never waiting.

    The kernel drops the lock when its process ends, however it ends, so a killed run leaves no stale lock (at
    most the file, which the next run takes over). The file holds the holder's pid, for the message others get;
    ``release`` removes it. A taker checks that the file it locked is still the one at the path (a holder may
    remove it between our open and our lock), and tries again if not.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; ``ConfigError`` if another process holds it, ``OSError`` if the file cannot be made."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise ConfigError(
                    f"{self.folder} is in use by another labeling run{pid}; wait for it to end, or choose another "
                    f"output folder (--out)"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Remove the file and drop the lock (in that order: a waiting taker then locks a file at no path and
        tries again). Calling it again does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        remove_quietly(self.path)
        os.close(fd)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
