"""``avala-infer models pull NAME``: fetch a model spec's weights from the ``url:`` in its spec, on request only.

Nothing else in avala-infer downloads: an :class:`~avala_infer.engine.Engine` whose weights are missing fails
with a message that names this command. :func:`pull`

1. does nothing (no request at all) when the spec's weights already resolve (``AVALA_INFER_MODELS``, the user
   model folder, a path), unless ``force``;
2. otherwise fetches the URL with :mod:`urllib.request` (``http``, ``https`` and ``file`` URLs; a timeout on
   every read) into a temporary file in the user model folder (``weights_dirs()[-1]``), hashing as it goes;
3. refuses the file, storing nothing, when the spec pins a ``sha256`` and the file's differs
   (:class:`~avala_infer.errors.WeightsHashMismatchError`), or when the transfer fails or is cut short
   (:class:`~avala_infer.errors.WeightsDownloadError`);
4. renames it into place and records it in ``trusted.json`` there, with its sha256 and URL, as
   ``avala-infer models add`` does: a later change to the file is refused at load.

Mirrors (air-gapped hosts): ``mirror`` (``--mirror URL`` on the command line, else ``$AVALA_INFER_MIRROR``) is
a base URL; the file is fetched from ``<mirror>/<the last path segment of the spec's url>``, so a plain folder
of weights files served by any HTTP server, or read directly through ``file:///path/to/folder``, is a mirror.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from avala_infer.errors import ConfigError, WeightsDownloadError, WeightsHashMismatchError
from avala_infer.specs import URL_SCHEMES, ModelSpec, find_spec, weights_dirs, weights_present
from avala_infer.trust import CHUNK_BYTES, record_trusted, sha256_of

log = logging.getLogger(__name__)

MIRROR_ENV = "AVALA_INFER_MIRROR"
DEFAULT_TIMEOUT_S = 60.0  # per blocking read (connect, each chunk), not for the whole file

ProgressFn = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


@dataclasses.dataclass(frozen=True)
class PullResult:
    """What :func:`pull` did: ``path`` holds the weights; ``downloaded`` is False when they were there already
    (then ``url`` is None and no request was made)."""

    name: str
    path: Path
    sha256: str | None
    downloaded: bool
    url: str | None = None
    pinned: bool = False  # the spec pins a sha256 and the file has it


def mirror_url(url: str, mirror: str) -> str:
    """The spec's ``url`` fetched from ``mirror``: ``mirror`` (a base URL) + the URL's file name."""
    file_name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not file_name:
        raise ConfigError(f"url {url!r} does not end in a file name, so no mirror can stand in for it")
    check_url(mirror, "mirror")
    return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)


def check_url(url: str, what: str = "url") -> None:
    if urllib.parse.urlsplit(url).scheme.lower() not in URL_SCHEMES:
        raise ConfigError(f"{what} {url!r} is not a {'/'.join(URL_SCHEMES)}:// URL; give the address to fetch from")


def target_path(spec: ModelSpec) -> Path:
    """Where the pulled weights go: the user model folder, under the name the spec looks for."""
    given = Path(spec.weights)
    relative = given if not given.is_absolute() and ".." not in given.parts else Path(given.name)
    return weights_dirs()[-1] / relative


def pull(
    model: str | ModelSpec,
    *,
    mirror: str | None = None,
    force: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: ProgressFn | None = None,
) -> PullResult:
    """Make ``model``'s weights present, fetching them from its spec's ``url`` if they are not (see the module
    docstring). ``mirror`` defaults to ``$AVALA_INFER_MIRROR``."""
    spec = model if isinstance(model, ModelSpec) else find_spec(model)
    present = None if force else weights_present(spec)
    if present is not None:
        digest = sha256_of(present) if spec.sha256 and present.is_file() else None
        if digest is not None and digest != spec.sha256:
            raise WeightsHashMismatchError(
                f"the weights of {spec.name!r} at {present} have sha256 {digest}, but its spec pins {spec.sha256}; "
                "remove that file (or pass --force to fetch the right one into the user model folder)"
            )
        return PullResult(spec.name, present, digest, downloaded=False, pinned=digest is not None)
    if not spec.url:
        where = f" ({spec.source})" if spec.source else ""
        raise ConfigError(
            f"model {spec.name!r}{where} has no url: in its spec, so there is nothing to pull; put its weights "
            f"{spec.weights!r} in a folder named by AVALA_INFER_MODELS or in {weights_dirs()[-1]}, or add a url: "
            "line to the spec"
        )
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    url = mirror_url(spec.url, mirror) if mirror else spec.url
    check_url(url)
    target = target_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = _download(url, target, spec, timeout_s, progress)
    record_trusted(target, digest, url)
    log.info("pulled %s from %s into %s (sha256 %s)", spec.name, url, target, digest)
    return PullResult(spec.name, target, digest, downloaded=True, url=url, pinned=spec.sha256 is not None)


def _download(url: str, target: Path, spec: ModelSpec, timeout_s: float, progress: ProgressFn | None) -> str:
    """Fetch ``url`` into a temporary file beside ``target``, check it, rename it to ``target``; its sha256."""
    request = urllib.request.Request(url, headers={"User-Agent": "avala-infer (models pull)"})
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
    try:
        with tmp:
            digest = hashlib.sha256()
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    received = 0
                    while chunk := response.read(CHUNK_BYTES):
                        tmp.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(received, total)
            except urllib.error.HTTPError as exc:
                raise WeightsDownloadError(
                    f"cannot pull {spec.name!r}: {url} answered HTTP {exc.code} {exc.reason}. Nothing was stored. "
                    f"Check the url in {spec.source or 'its spec'}, or fetch from a mirror with --mirror URL "
                    f"(or {MIRROR_ENV})"
                ) from exc
            except (urllib.error.URLError, OSError, ValueError) as exc:  # DNS, refused, timeout, reset
                reason = getattr(exc, "reason", None) or exc
                raise WeightsDownloadError(
                    f"cannot pull {spec.name!r} from {url}: {reason}. Nothing was stored. On a host without "
                    f"internet access fetch from a mirror with --mirror URL (or {MIRROR_ENV}), or put the file "
                    f"{spec.weights!r} in a folder named by AVALA_INFER_MODELS"
                ) from exc
            if total is not None and received != total:
                raise WeightsDownloadError(
                    f"cannot pull {spec.name!r}: {url} sent {received} of {total} bytes (cut short). Nothing was "
                    "stored; try again"
                )
        actual = digest.hexdigest()
        if spec.sha256 is not None and actual != spec.sha256:
            raise WeightsHashMismatchError(
                f"refusing the file {url} sent for {spec.name!r}: its sha256 is {actual}, but "
                f"{spec.source or 'its spec'} pins {spec.sha256}. Nothing was stored. Check the url (or the "
                "mirror): it does not hold the weights the spec means"
            )
        os.replace(tmp.name, target)
        return actual
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
