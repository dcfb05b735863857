"""Finding a Python that can run the engine (torch, numpy, imageio, OpenCV).

Blender's own Python has no torch. Two ways out, both one click from the panel:

1. *Install dependencies*: pip-installs the engine's requirements into ``deps/`` under the
   extension's user directory, using Blender's own Python; the worker then runs Blender's
   Python with ``PYTHONPATH = engine + deps``.
2. *Engine Python* in the add-on preferences: any Python that has them (e.g. a project's
   ``.venv``); the worker runs it with ``PYTHONPATH = engine``.

The engine itself is the copy bundled inside the extension (``engine/core``), so the add-on
and the engine always match; a development checkout falls back to the repository root.
Checking an interpreter takes seconds (it imports torch), so the result is cached and the
panel only ever reads the cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .worker import engine_env

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # inve_blender/
REQUIRED_MODULES = ("torch", "numpy", "imageio", "imageio_ffmpeg", "cv2")
PROBE = (
    "import json, importlib\n"
    "out = {'python': __import__('sys').version.split()[0], 'missing': []}\n"
    "for name in %r:\n"
    "    try:\n"
    "        m = importlib.import_module(name)\n"
    "        out[name] = getattr(m, '__version__', 'yes')\n"
    "    except Exception as exc:\n"
    "        out['missing'].append(name + ': ' + str(exc).splitlines()[0][:200] if str(exc) else name)\n"
    "try:\n"
    "    import core\n"
    "    out['engine'] = core.__version__\n"
    "    out['engine_path'] = core.__file__\n"
    "except Exception as exc:\n"
    "    out['missing'].append('core (the INVE engine): ' + str(exc)[:200])\n"
    "import importlib.util\n"
    "out['ray'] = importlib.util.find_spec('ray') is not None\n"  # optional (Train All on Ray); not imported
    "if 'torch' in out:\n"
    "    import torch\n"
    "    out['cuda'] = bool(torch.cuda.is_available())\n"
    "print(json.dumps(out))\n"
) % (REQUIRED_MODULES,)


@dataclass(frozen=True)
class EngineSpec:
    """How to start the engine: an interpreter and what goes on its PYTHONPATH."""

    python: str
    pythonpath: tuple[str, ...]
    origin: str  # 'preferences' | 'installed dependencies' | 'this Python'

    def env(self) -> dict[str, str]:
        return engine_env(self.pythonpath)

    def command(self, subcommand: str, *args: str) -> list[str]:
        return [self.python, "-m", "core", subcommand, *args]


@dataclass
class EngineStatus:
    ok: bool
    message: str
    spec: EngineSpec | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    checked_at: float = 0.0

    @property
    def cuda(self) -> bool:
        return bool(self.versions.get("cuda"))

    @property
    def ray(self) -> bool:
        """Whether the engine's Python has Ray (the batch extra): Train All then runs on Ray."""
        return bool(self.versions.get("ray"))


def engine_root() -> Path:
    """Folder holding the ``core`` package: the bundled copy, else the development checkout."""
    bundled = PACKAGE_DIR / "engine"
    if (bundled / "core" / "cli.py").is_file():
        return bundled
    repo = PACKAGE_DIR.parent
    if (repo / "core" / "cli.py").is_file():
        return repo
    return bundled


def requirements(root: Path | None = None) -> list[str]:
    """The engine's pip requirements: ``engine/requirements.txt`` in the extension (written
    by the build script from pyproject.toml), or pyproject.toml in a checkout."""
    root = root or engine_root()
    req = root / "requirements.txt"
    if req.is_file():
        return [ln.strip() for ln in req.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    raise FileNotFoundError(f"the engine's requirements are missing from {root}")


def resolve(preferred_python: str, deps_dir: str | None, blender_python: str | None = None,
            engine_python: str | None = None) -> EngineSpec:
    """Pick the interpreter: the preference if set, else the engine environment that Install
    Engine made (``engine_python``, see io/engine_setup.py), else Blender's own Python (+ deps
    installed into the extension's folder)."""
    root = str(engine_root())
    if preferred_python.strip():
        return EngineSpec(python=os.path.abspath(os.path.expanduser(preferred_python.strip())),
                          pythonpath=(root,), origin="preferences")
    if engine_python:
        return EngineSpec(python=engine_python, pythonpath=(root,), origin="engine environment")
    python = blender_python or sys.executable
    if deps_dir and os.path.isdir(deps_dir) and os.listdir(deps_dir):
        return EngineSpec(python=python, pythonpath=(root, deps_dir), origin="installed dependencies")
    return EngineSpec(python=python, pythonpath=(root,), origin="this Python")


def check(spec: EngineSpec, timeout: float = 120.0) -> EngineStatus:
    """Start the interpreter once and ask it for the engine's modules; never raises."""
    now = time.time()
    if not os.path.isfile(spec.python):
        return EngineStatus(False, f"Engine Python not found: {spec.python}", spec, checked_at=now)
    try:
        proc = subprocess.run([spec.python, "-c", PROBE], capture_output=True, env=spec.env(),
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return EngineStatus(False, f"Cannot run {spec.python}: {exc}", spec, checked_at=now)
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        info = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        info = None
    if proc.returncode != 0 or not isinstance(info, dict):
        err = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        return EngineStatus(False, f"{spec.python} failed: {err[-1] if err else 'no output'}", spec, checked_at=now)
    missing = info.get("missing") or []
    if missing:
        short = ", ".join(m.split(":")[0] for m in missing)
        how = ("click Install Engine (or Install Dependencies), or set Engine Python in the add-on "
               "preferences to a Python environment that has them")
        return EngineStatus(False, f"The engine needs {short}: {how}", spec, info, now)
    where = "GPU (CUDA)" if info.get("cuda") else "CPU"
    return EngineStatus(True, f"Engine ready: torch {info.get('torch')} on {where} ({spec.origin})", spec, info, now)


def install_command(python: str, deps_dir: str, reqs: list[str]) -> list[str]:
    """pip into the extension's own folder; never into Blender's (often read-only) site-packages."""
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--upgrade", "--target", deps_dir, *reqs]


def pip_available(python: str) -> bool:
    try:
        return subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_pip(python: str) -> tuple[bool, str]:
    """Blender ships ``ensurepip``; bootstrap pip once if the bundled Python lacks it."""
    if pip_available(python):
        return True, ""
    try:
        proc = subprocess.run([python, "-m", "ensurepip", "--user"], capture_output=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot bootstrap pip: {exc}"
    if proc.returncode != 0 or not pip_available(python):
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return False, f"pip is not available for {python}: {err[-1] if err else 'ensurepip failed'}"
    return True, ""


# -- the cached status the panel reads ------------------------------------------------------
_STATUS: EngineStatus | None = None


def cached_status() -> EngineStatus | None:
    return _STATUS


def set_status(status: EngineStatus | None) -> None:
    global _STATUS
    _STATUS = status


def check_cached(spec: EngineSpec) -> EngineStatus:
    """The cached status if it is a success for the same interpreter, else a fresh check
    (a failure is re-checked every time: the user may have just fixed it)."""
    st = _STATUS
    if st is not None and st.ok and st.spec == spec:
        return st
    st = check(spec)
    set_status(st)
    return st
