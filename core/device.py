"""Which torch device trains and runs the networks: ``auto`` | ``cpu`` | ``cuda`` | ``mps``.

``auto`` prefers CUDA (with tinycudann when it imports, see :mod:`core.encoding`), then Apple's
Metal (``mps``, Apple Silicon), then the CPU. On ``mps`` the pure-PyTorch hash grid runs as on
the CPU: everything in ``core`` keeps torch tensors in float32/int64 (``mps`` has no float64)
and uses gather/scatter-add ops that Metal implements; ``tests/test_device.py`` scans ``core``
for float64 tensors placed on a device so that stays true. Adam's fused kernel is asked for only
where every supported torch has it (:func:`fused_adam`).

What the machine offers is read once into :class:`Availability`; :func:`pick_device` takes it
as an argument so every platform's choice is unit-tested without the hardware.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from core.errors import InveError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Availability:
    """What this torch build and machine can run on."""

    cuda: bool
    mps: bool  # torch.backends.mps.is_available(): built with MPS *and* a Metal device now
    mps_built: bool  # torch.backends.mps.is_built(): this torch wheel has the MPS backend
    system: str  # platform.system(): 'Linux' | 'Darwin' | 'Windows'
    machine: str  # platform.machine(): 'x86_64' | 'arm64' | 'AMD64' | ...


def availability() -> Availability:
    mps_backend = getattr(torch.backends, "mps", None)
    return Availability(
        cuda=bool(torch.cuda.is_available()),
        mps=bool(mps_backend is not None and mps_backend.is_available()),
        mps_built=bool(mps_backend is not None and mps_backend.is_built()),
        system=platform.system(),
        machine=platform.machine(),
    )


def _why_no_mps(av: Availability) -> str:
    if av.system != "Darwin":
        return f"MPS (Apple Metal) exists only on macOS, this is {av.system or 'another system'}"
    if not av.mps_built:
        return "this PyTorch build has no MPS backend"
    return "no Metal device is available to PyTorch (MPS needs macOS 12.3 or newer on Apple Silicon)"


def pick_device(name: str, av: Availability | None = None) -> torch.device:
    """The device for ``--device NAME``; an explicit device that is not there is a one-line error.

    ``av`` defaults to this machine's :func:`availability` (tests pass one in).
    """
    if name not in DEVICE_NAMES:
        raise InveError(f"--device {name!r}: choose one of {', '.join(DEVICE_NAMES)}")
    av = av or availability()
    if name == "cuda" and not av.cuda:
        raise InveError("--device cuda was asked for but no CUDA device is available")
    if name == "mps" and not av.mps:
        raise InveError(f"--device mps was asked for but MPS is not available: {_why_no_mps(av)}")
    if name == "auto":
        name = "cuda" if av.cuda else "mps" if av.mps else "cpu"
    return torch.device(name)


def fused_adam(device: torch.device) -> bool:
    """Whether to ask Adam for its fused kernel: CPU and CUDA have it in every torch this
    project supports; on ``mps`` the default (foreach) implementation is used."""
    return device.type in ("cpu", "cuda")
