"""Device selection per platform (availability injected: no Apple or NVIDIA hardware needed)
and a guard that ``core`` keeps to what Apple's ``mps`` backend can run."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core.cli import build_parser
from core.device import Availability, availability, fused_adam, pick_device
from core.errors import InveError

LINUX_CPU = Availability(cuda=False, mps=False, mps_built=False, system="Linux", machine="x86_64")
LINUX_NVIDIA = Availability(cuda=True, mps=False, mps_built=False, system="Linux", machine="x86_64")
WINDOWS_NVIDIA = Availability(cuda=True, mps=False, mps_built=False, system="Windows", machine="AMD64")
APPLE_SILICON = Availability(cuda=False, mps=True, mps_built=True, system="Darwin", machine="arm64")
APPLE_OLD_MACOS = Availability(cuda=False, mps=False, mps_built=True, system="Darwin", machine="arm64")
MAC_NO_MPS_BUILD = Availability(cuda=False, mps=False, mps_built=False, system="Darwin", machine="x86_64")


@pytest.mark.parametrize("av, expected", [
    (LINUX_CPU, "cpu"), (LINUX_NVIDIA, "cuda"), (WINDOWS_NVIDIA, "cuda"), (APPLE_SILICON, "mps"),
    (APPLE_OLD_MACOS, "cpu"), (MAC_NO_MPS_BUILD, "cpu"),
    # both present (never on a real machine today): CUDA first
    (Availability(cuda=True, mps=True, mps_built=True, system="Darwin", machine="arm64"), "cuda"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(av: Availability, expected: str) -> None:
    assert pick_device("auto", av) == torch.device(expected)


@pytest.mark.parametrize("av", [LINUX_CPU, LINUX_NVIDIA, APPLE_SILICON])
def test_cpu_is_always_there(av: Availability) -> None:
    assert pick_device("cpu", av) == torch.device("cpu")


def test_explicit_devices_that_exist() -> None:
    assert pick_device("cuda", LINUX_NVIDIA) == torch.device("cuda")
    assert pick_device("mps", APPLE_SILICON) == torch.device("mps")


@pytest.mark.parametrize("name, av, says", [
    ("cuda", LINUX_CPU, "no CUDA device"),
    ("cuda", APPLE_SILICON, "no CUDA device"),
    ("mps", LINUX_NVIDIA, "only on macOS, this is Linux"),
    ("mps", WINDOWS_NVIDIA, "only on macOS, this is Windows"),
    ("mps", MAC_NO_MPS_BUILD, "no MPS backend"),
    ("mps", APPLE_OLD_MACOS, "macOS 12.3"),
    ("tpu", LINUX_CPU, "choose one of auto, cpu, cuda, mps"),
])
def test_missing_device_is_one_clear_line(name: str, av: Availability, says: str) -> None:
    with pytest.raises(InveError) as err:
        pick_device(name, av)
    msg = str(err.value)
    assert says in msg and "\n" not in msg


def test_this_machine() -> None:
    av = availability()
    assert av.cuda == torch.cuda.is_available()
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    assert pick_device("auto") == pick_device("auto", av)


def test_cli_accepts_every_device_name() -> None:
    parser = build_parser()
    for name in ("auto", "cpu", "cuda", "mps"):
        assert parser.parse_args(["train", "v.mp4", "-o", "p", "--device", name]).device == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "v.mp4", "-o", "p", "--device", "tpu"])


def test_fused_adam_only_where_supported() -> None:
    assert fused_adam(torch.device("cpu")) and fused_adam(torch.device("cuda"))
    assert not fused_adam(torch.device("mps"))


def test_core_puts_no_float64_tensors_on_a_device() -> None:
    """``mps`` has no float64: torch tensors that go to the training device must be float32. A
    float64 tensor made on the host (no ``device``) and cast before it moves is fine (the frame
    strata in core/sampling.py); one made on, or moved to, a device is not."""
    core = Path(__file__).resolve().parents[1] / "core"
    f64 = re.compile(r"torch\.(float64|double)\b|torch\.DoubleTensor")
    offenders = [f"{p.relative_to(core.parent)}:{i}: {line.strip()}"
                 for p in sorted(core.rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if ".double()" in line or (f64.search(line) and ("device" in line or ".to(" in line))]
    assert not offenders, "float64 torch tensors cannot go to mps:\n" + "\n".join(offenders)
