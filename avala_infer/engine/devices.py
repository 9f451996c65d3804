"""Which devices an engine runs on: one device as before, or several CUDA GPUs of this host (one predictor each).

``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (see :func:`avala_infer.predictors.base.resolve_device`),
or several GPUs: ``cuda:0,1`` / ``0,1`` / ``cuda:0,cuda:2`` or a list of such entries, or ``all`` (every CUDA
device torch sees). ``all`` on a host without CUDA is an error, as ``cuda`` is there: it asks for GPUs, and a job
config written for a GPU host must not crawl along on a laptop's CPU unnoticed (``auto`` is the setting that
takes whatever the host has). ``auto`` stays one GPU (``cuda:0``): a host's other GPUs may be someone else's.
A list holds GPUs only (``cpu`` cannot be one of several devices) and no GPU twice: a second predictor on the
same GPU would only split its time (a GPU engine overlaps its batches on one device already).
"""

from __future__ import annotations

from collections.abc import Sequence

from avala_infer.errors import BackendUnavailableError, ConfigError

ALL_DEVICES = "all"


def resolve_devices(device: str | Sequence[str] | None) -> tuple[str, ...]:
    """``device`` as canonical device names (``cpu`` or ``cuda:N``), one per predictor the engine loads."""
    from avala_infer.predictors.base import resolve_device

    entries = _entries(device)
    if entries == [ALL_DEVICES]:
        return _every_cuda_device()
    if ALL_DEVICES in entries:
        raise ConfigError(f"device {device!r}: 'all' stands alone (every CUDA device); do not list it with others")
    if len(entries) == 1:
        return (resolve_device(entries[0]),)
    if any(entry in ("cpu", "auto") for entry in entries):
        raise ConfigError(
            f"device {device!r}: several devices are several CUDA GPUs (cuda:0,1 or all); cpu and auto stand alone"
        )
    devices = tuple(resolve_device(entry) for entry in entries)
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise ConfigError(f"device {device!r} names {', '.join(repeated)} twice: list each GPU once")
    return devices


def _entries(device: str | Sequence[str] | None) -> list[str]:
    """The entries of a device setting: ``cuda:0,1`` -> ``["cuda:0", "1"]`` (a bare number is a CUDA index)."""
    if device is None or (isinstance(device, str) and not device.strip()):
        return ["auto"]
    parts = device.split(",") if isinstance(device, str) else [str(one) for one in device]
    entries = [part.strip().lower() for part in parts]
    if not entries or any(not entry for entry in entries):
        raise ConfigError(f"device {device!r} has an empty entry: use auto, cpu, cuda, cuda:N, cuda:0,1 or all")
    return entries


def _every_cuda_device() -> tuple[str, ...]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise BackendUnavailableError(
            f"device 'all' means every CUDA GPU, and torch sees none (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); use --device cpu (or auto: a GPU when there is one, else the CPU)"
        )
    return tuple(f"cuda:{index}" for index in range(count))
