"""One exception tree for everything avala-infer raises on purpose.

::

    AvalaInferError
    ├── ConfigError                  a bad argument or configuration, found before any work starts
    │   ├── ModelSpecError           a model spec file that cannot be read or is incomplete
    │   ├── UnknownModelError        a model name that no spec and no file answers to
    │   ├── UnknownLabelError        a label name the model (after mapping) does not have
    │   ├── UnsupportedInputError    an input the model type cannot take (text to a detector, ...)
    │   ├── UntrustedWeightsError    a pickled checkpoint (.pt) from outside the model folders, not trusted
    │   │   └── WeightsHashMismatchError  weights whose sha256 differs from the one the spec pins
    │   ├── UnsafeURLError           a callback URL the policy refuses (scheme, link-local, metadata)
    │   └── ConflictError            a request the object's state refuses now (an execution answered already)
    ├── WeightsNotFoundError         a weights file that is not where the spec says; says where to put it
    │   └── WeightsDownloadError     `models pull` could not fetch them (network, HTTP status, cut short)
    ├── BackendUnavailableError      a backend package or a device that is not installed / not present
    ├── ModelLoadError               weights that exist but do not load
    ├── ItemError                    one input item failed (missing, unreadable, corrupt); the run goes on
    ├── StoreError                   the store (SQLite under the home folder) cannot be opened or written
    │   └── LeaseLost                another worker holds the job now (our lease ran out); stop writing
    └── NotFoundError                a project, dataset, task or job uid that the store does not hold

Every message names what was wrong and how to fix it.
"""

from __future__ import annotations


class AvalaInferError(Exception):
    """Root of every error avala-infer raises on purpose."""


class ConfigError(AvalaInferError, ValueError):
    """A bad argument or configuration, detected before any work starts."""


class ModelSpecError(ConfigError):
    """A model spec (YAML) that cannot be read or is missing required fields."""


class UnknownModelError(ConfigError):
    """No model spec, spec file or weights file answers to this name."""


class UnknownLabelError(ConfigError):
    """A label name that is not among the model's labels."""


class UnsupportedInputError(ConfigError):
    """An input kind that this model type cannot take."""


class UntrustedWeightsError(ConfigError):
    """A pickled checkpoint (``.pt``: loading it runs code) that is not in a model folder, not registered with
    ``avala-infer models add``, and not trusted for this run (``trust_weights=True`` / ``--trust-weights``)."""


class WeightsHashMismatchError(UntrustedWeightsError):
    """Weights whose sha256 differs from the ``sha256:`` the model spec pins; nothing was loaded."""


class UnsafeURLError(ConfigError):
    """A callback URL refused by the URL policy (not http(s), a link-local or cloud metadata address...)."""


class WeightsNotFoundError(AvalaInferError, FileNotFoundError):
    """The weights file named by a spec is not in any of the searched places."""


class WeightsDownloadError(WeightsNotFoundError):
    """``avala-infer models pull`` could not fetch a spec's weights (no network, an HTTP error, a download
    cut short); nothing was stored. A fetched file of the wrong sha256 is a :class:`WeightsHashMismatchError`."""


class BackendUnavailableError(AvalaInferError, ImportError):
    """A backend package or device that this run needs is not available."""


class ModelLoadError(AvalaInferError):
    """A weights file exists but could not be loaded by its backend."""


class ItemError(AvalaInferError):
    """One input item failed; the run records it and goes on with the next."""


class StoreError(AvalaInferError):
    """The embedded store cannot be opened or written (a read-only or full disk, a corrupt file)."""


class LeaseLost(StoreError):
    """Another worker took this job over (our lease ran out); stop without writing more."""


class NotFoundError(AvalaInferError, LookupError):
    """No project, dataset, task or job has this uid; the message lists how to find the right one."""


class ConflictError(ConfigError):
    """A request that the object's current state refuses (the HTTP API's 409): an answer to an agent execution
    already answered (an action is accepted once), or not leased by whoever answers (never leased, leased by
    another consumer, or its lease ran out)."""
