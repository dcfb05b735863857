"""The engine's own Python environment, built and owned by the add-on (plain Python, no bpy).

Why a separate environment: the engine needs PyTorch (gigabytes, and a different build per
machine), while Blender's Python is one fixed version with its own numpy. Installing into
Blender's Python fights its bundled packages and repeats the download for every Blender
version. Instead the add-on makes one virtualenv in a per-user data folder
(:func:`default_home`: ``~/.local/share/inve-blender/engine`` on Linux, ``~/Library/Application
Support/...`` on macOS, ``%LOCALAPPDATA%\\...`` on Windows), outside every Blender install, so it
survives Blender upgrades and every Blender version shares it. The add-on then runs the engine
with that environment's Python (``engine_env``'s *Engine Python*); the engine's code itself stays
the copy bundled in the extension.

What gets installed depends on the machine (:func:`plan_install`): PyTorch's CUDA wheels where an
NVIDIA GPU is present on Linux or Windows, its CPU wheels elsewhere (a tenth of the size), the
default wheels (with Apple's MPS) on Apple Silicon; Intel Macs have no current PyTorch wheel and
are told so. Online installs run only when the caller says online access is allowed (Blender's
*Allow Online Access*, ``bpy.app.online_access``); otherwise, or for studios without internet,
everything installs from a folder of wheels (``pip --no-index --find-links``), checked first so
a missing requirement is one clear line before anything is touched.

:class:`EngineInstaller` runs the steps (make the venv, then pip) in child processes, parses
pip's output into progress (package being fetched, bytes, share done), can be cancelled at any
time (the child is killed; a later run repairs or reuses what is there: pip is idempotent and
the environment counts as installed only once its marker file is written, last), and appends
everything to a log file the user can open. Nothing here blocks a caller that uses
:meth:`EngineInstaller.start` and :meth:`EngineInstaller.snapshot`.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

HOME_ENV = "INVE_ENGINE_HOME"  # overrides the folder (tests, or a studio's shared location)
MARKER = "inve-engine.json"  # written last: the environment is complete
LOG_NAME = "install.log"
LOCK_NAME = ".install.lock"
VENV_DIR = "venv"
TORCH_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu",
               "cuda": "https://download.pytorch.org/whl/cu128"}
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13), (3, 14))  # PyTorch 2.13 wheels
ONLINE_OFF = ("Online access is off (Preferences > System > Network > Allow Online Access): turn it on to "
              "download the engine, or install from a folder of wheels")
# share of the bar: the venv, then each pip step by its expected weight
VENV_SHARE = 0.05


# =============================================================================================
# where it lives

def default_home(system: str | None = None, environ: Mapping[str, str] | None = None,
                 user_home: str | None = None) -> Path:
    """The per-user folder for the engine environment (outside any Blender install)."""
    env = os.environ if environ is None else environ
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser()
    system = system or platform.system()
    home = Path(user_home or os.path.expanduser("~"))
    if system == "Windows":
        base = Path(env["LOCALAPPDATA"]) if env.get("LOCALAPPDATA") else home / "AppData" / "Local"
    elif system == "Darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else home / ".local" / "share"
    return base / "inve-blender" / "engine"


def venv_python(home: Path, system: str | None = None) -> Path:
    venv = Path(home) / VENV_DIR
    if (system or platform.system()) == "Windows":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def log_path(home: Path) -> Path:
    return Path(home) / LOG_NAME


# =============================================================================================
# the machine -> what to install

@dataclass(frozen=True)
class Machine:
    system: str  # 'Linux' | 'Windows' | 'Darwin'
    arch: str  # 'x86_64' | 'arm64'
    nvidia_gpu: bool


def _norm_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64", "i686", "x86"):
        return "x86_64"
    if m in ("arm64", "aarch64", "armv8", "arm64e"):
        return "arm64"
    return m


def detect_machine(run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                   which: Callable[[str], str | None] = shutil.which,
                   exists: Callable[[str], bool] = os.path.exists) -> Machine:
    """This machine: system, CPU architecture, and whether an NVIDIA driver sees a GPU."""
    system = platform.system()
    nvidia = False
    if system in ("Linux", "Windows"):
        if system == "Linux" and exists("/proc/driver/nvidia/version"):
            nvidia = True
        else:
            smi = which("nvidia-smi")
            if smi:
                try:
                    proc = run([smi, "-L"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
                    nvidia = proc.returncode == 0 and "GPU" in (proc.stdout or "")
                except (OSError, subprocess.SubprocessError):
                    nvidia = False
    return Machine(system=system, arch=_norm_arch(platform.machine()), nvidia_gpu=nvidia)


@dataclass(frozen=True)
class InstallPlan:
    """Which PyTorch build, from where, and what the user is told about it."""

    torch_build: str  # 'cuda' | 'cpu' | 'mps' | 'none'
    torch_index: str | None  # index for the torch step; None: the default index (PyPI)
    approx_gb: float  # download + unpacked size, roughly, for the button's label
    description: str  # one line for the UI
    supported: bool = True


def plan_install(machine: Machine) -> InstallPlan:
    if machine.system == "Darwin":
        if machine.arch != "arm64":
            return InstallPlan("none", None, 0.0, "PyTorch has no current wheels for Intel Macs (the last was 2.2; the "
                               "engine needs 2.13): set Engine Python to an environment you built, or use an Apple "
                               "Silicon, Linux or Windows machine", supported=False)
        return InstallPlan("mps", None, 1.0, "PyTorch for Apple Silicon (Metal/MPS), about 1 GB")
    if machine.system in ("Linux", "Windows"):
        if machine.nvidia_gpu:
            gb = 6.0 if machine.system == "Linux" else 4.5
            return InstallPlan("cuda", TORCH_INDEX["cuda"], gb,
                               f"PyTorch with CUDA (NVIDIA GPU found), about {gb:.1f} GB")
        return InstallPlan("cpu", TORCH_INDEX["cpu"], 1.0, "PyTorch for the CPU (no NVIDIA GPU found), about 1 GB")
    return InstallPlan("none", None, 0.0, f"No PyTorch wheels for {machine.system} {machine.arch}: set Engine Python "
                       "to an environment you built", supported=False)


# =============================================================================================
# requirements and wheel folders

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = _NAME.match(req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return canonical(m.group(1))


def folder_projects(folder: Path) -> set[str]:
    """Project names of the wheels and source archives in ``folder``."""
    names = set()
    for p in Path(folder).iterdir():
        n = p.name
        if n.endswith(".whl"):
            names.add(canonical(n.split("-")[0]))
        elif n.endswith((".tar.gz", ".zip", ".tar.bz2")):
            stem = re.sub(r"\.(tar\.gz|tar\.bz2|zip)$", "", n)
            if "-" in stem:
                names.add(canonical(stem.rsplit("-", 1)[0]))
    return names


def check_wheels_folder(folder: Path, requirements: Sequence[str]) -> str | None:
    """One line saying what is wrong with an offline folder, or None if it has every requirement."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"Wheels folder not found: {folder}"
    have = folder_projects(folder)
    missing = [requirement_name(r) for r in requirements if requirement_name(r) not in have]
    if missing:
        return (f"The wheels folder {folder} has no wheel for {', '.join(missing)}: add them "
                f"(pip download -d FOLDER <requirement>) or install online")
    return None


def read_requirements(path: Path) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


# =============================================================================================
# a Python to make the venv from

def python_version(python: str, timeout: float = 30.0) -> tuple[int, int] | None:
    """(major, minor) if ``python`` runs and can make a venv with pip, else None."""
    try:
        proc = subprocess.run([python, "-c", "import sys, venv, ensurepip; print('%d %d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) != 2:
        return None
    return int(parts[0]), int(parts[1])


def find_base_python(blender_python: str | None = None, candidates: Iterable[str] | None = None,
                     which: Callable[[str], str | None] = shutil.which,
                     version: Callable[[str], tuple[int, int] | None] = python_version) -> str | None:
    """A Python that PyTorch supports and that can make venvs: a system one first (the environment
    then outlives any Blender version), else Blender's own ``sys.executable``."""
    if candidates is None:
        names = [f"python{a}.{b}" for a, b in reversed(SUPPORTED_PYTHONS)] + ["python3", "python"]
        candidates = [p for p in (which(n) for n in names) if p]
    for c in [*candidates, *([blender_python] if blender_python else [])]:
        v = version(c)
        if v is not None and v in SUPPORTED_PYTHONS:
            return c
    return None


# =============================================================================================
# state on disk (fast: file checks only)

@dataclass(frozen=True)
class EnvState:
    status: str  # 'missing' | 'incomplete' | 'broken' | 'outdated' | 'ready'
    home: Path
    python: Path
    message: str
    info: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def env_state(home: Path, requirements: Sequence[str] | None = None) -> EnvState:
    home = Path(home)
    py = venv_python(home)
    marker = home / MARKER
    if not (home / VENV_DIR).exists():
        return EnvState("missing", home, py, "The engine is not installed: click Install Engine")
    info: dict = {}
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    if not info:
        return EnvState("incomplete", home, py, "The engine install did not finish: click Install Engine to resume")
    if not py.exists() or not _base_python_exists(home):
        base = info.get("base_python", "its Python")
        return EnvState("broken", home, py, f"The engine environment's Python ({base}) is gone: click Install Engine "
                        "to rebuild it", info)
    if requirements is not None and sorted(info.get("requirements", [])) != sorted(requirements):
        return EnvState("outdated", home, py, "This version of the add-on needs other engine packages: click "
                        "Install Engine to update", info)
    size = info.get("size_bytes")
    extra = f", {size / 1e9:.1f} GB" if size else ""
    return EnvState("ready", home, py, f"Engine installed ({info.get('torch_build', '?')}{extra})", info)


def _base_python_exists(home: Path) -> bool:
    cfg = Path(home) / VENV_DIR / "pyvenv.cfg"
    try:
        for ln in cfg.read_text().splitlines():
            k, _, v = ln.partition("=")
            if k.strip() == "home":
                return Path(v.strip()).is_dir()
    except OSError:
        return False
    return True


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# =============================================================================================
# pip's output -> progress

_SIZE = re.compile(r"\(([\d.]+)\s*(kB|KB|MB|GB|bytes)\)")
_UNITS = {"bytes": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}
_RAW = re.compile(r"^Progress (\d+) of (\d+)$")


@dataclass
class Progress:
    """What the UI shows; a snapshot is a copy, safe to read from another thread."""

    stage: str = "waiting"  # waiting | venv | packages | installing | done | error | cancelled
    fraction: float = 0.0
    message: str = ""
    current: str = ""  # package being fetched
    bytes_done: int = 0  # of the current download
    bytes_total: int = 0
    downloaded: int = 0  # bytes of all finished downloads
    packages: int = 0  # packages collected so far
    finished: bool = False
    ok: bool = False
    cancelled: bool = False
    error: str = ""
    size_bytes: int = 0  # the environment on disk, when finished

    def text(self) -> str:
        if self.bytes_total and not self.finished:
            return f"{self.message} {self.bytes_done / 1e6:.0f}/{self.bytes_total / 1e6:.0f} MB"
        return self.message


class PipOutput:
    """Folds pip's output lines into :class:`Progress` for one pip step."""

    def __init__(self, progress: Progress, base: float, share: float, expected_packages: int) -> None:
        self.p, self.base, self.share = progress, base, share
        self.expected = max(1, expected_packages)
        self.errors: list[str] = []

    def _set_inner(self, inner: float) -> None:
        self.p.fraction = max(self.p.fraction, min(1.0, self.base + self.share * min(1.0, inner)))

    def feed(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        m = _RAW.match(text)
        if m:
            self.p.bytes_done, self.p.bytes_total = int(m.group(1)), int(m.group(2))
            return
        if text.startswith(("Collecting ", "Processing ", "Requirement already satisfied: ")):
            what = text.split(" ", 1)[1] if not text.startswith("Requirement") else text.split(": ", 1)[1]
            self._finish_download()
            self.p.packages += 1
            self.p.current = Path(what.split()[0]).name
            self.p.message = f"Collecting {self.p.current}"
            # resolving and fetching: up to 80 % of the step, approaching it as packages arrive
            self._set_inner(0.8 * self.p.packages / (self.p.packages + self.expected))
        elif text.startswith("Downloading "):
            self._finish_download()
            m = _SIZE.search(text)
            self.p.bytes_total = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
            self.p.bytes_done = 0
            name = text.split()[1]
            self.p.current = name.rsplit("/", 1)[-1]
            self.p.message = f"Downloading {self.p.current}"
        elif text.startswith("Installing collected packages:"):
            self._finish_download()
            self.p.stage = "installing"
            self.p.message = "Installing " + text.split(":", 1)[1].strip()[:120]
            self._set_inner(0.85)
        elif text.startswith("Successfully installed"):
            self.p.message = text[:160]
            self._set_inner(1.0)
        elif text.startswith("ERROR:"):
            self.errors.append(text[len("ERROR:"):].strip())

    def _finish_download(self) -> None:
        if self.p.bytes_total:
            self.p.downloaded += self.p.bytes_total
        self.p.bytes_done = self.p.bytes_total = 0


# =============================================================================================
# the installer

@dataclass(frozen=True)
class PipStep:
    label: str
    args: list[str]  # after "python -m pip install"
    share: float  # of the bar (after the venv)
    expected_packages: int


class InstallError(Exception):
    """A one-line reason the install cannot go on."""


class EngineInstaller:
    """Build (or repair, or update) the engine environment in ``home``.

    ``requirements``: the engine's pip requirements (``engine/requirements.txt``).
    ``wheels_dir``: install only from this folder (offline); else online, and only if
    ``allow_online``. ``base_python``: the Python the venv is made from (default:
    :func:`find_base_python` with ``blender_python`` as the fallback). ``environ``: the
    environment for the child processes (default: this process's).
    """

    def __init__(self, home: Path, requirements: Sequence[str], *, wheels_dir: Path | None = None,
                 allow_online: bool = False, base_python: str | None = None, blender_python: str | None = None,
                 machine: Machine | None = None, environ: Mapping[str, str] | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.home = Path(home)
        self.requirements = list(requirements)
        self.wheels_dir = Path(wheels_dir) if wheels_dir else None
        self.allow_online = allow_online
        self.base_python = base_python
        self.blender_python = blender_python
        self.machine = machine
        self.environ = dict(os.environ if environ is None else environ)
        self.on_progress = on_progress
        self.progress = Progress()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._log = None

    # -- for the UI ---------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return log_path(self.home)

    def snapshot(self) -> Progress:
        with self._lock:
            return replace(self.progress)

    def start(self) -> "EngineInstaller":
        """Run in a background thread; poll :meth:`snapshot`."""
        self._thread = threading.Thread(target=self.run, name="inve-engine-install", daemon=True)
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Progress:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def cancel(self) -> None:
        """Stop as soon as possible: the running child is killed; nothing is marked installed."""
        self._cancel.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _kill_tree(proc)

    # -- the work -------------------------------------------------------------------------
    def plan(self) -> InstallPlan:
        return plan_install(self.machine or detect_machine())

    def steps(self, python: str) -> list[PipStep]:
        """The pip steps after the venv exists (also written to the log)."""
        req_file = str(self.home / "requirements.txt")
        common = ["--disable-pip-version-check", "--no-input"]
        if self.wheels_dir is not None:
            return [PipStep("packages from the wheels folder",
                            [*common, "--no-index", "--find-links", str(self.wheels_dir), "-r", req_file],
                            1.0, len(self.requirements))]
        plan = self.plan()
        torch_reqs = [r for r in self.requirements if requirement_name(r) == "torch"]
        # a current pip first (a few MB): the venv's bundled one may predate byte-level progress
        steps: list[PipStep] = [PipStep("pip", [*common, "--upgrade", "pip"], 0.02, 1)]
        if torch_reqs:
            # an extra index: pip takes the highest version, and a local build such as 2.13.0+cpu or
            # 2.13.0+cu128 sorts above the default index's plain 2.13.0 (PEP 440)
            index = ["--extra-index-url", plan.torch_index] if plan.torch_index else []
            steps.append(PipStep(f"PyTorch ({plan.torch_build})", [*common, *index, *torch_reqs], 0.75, 8))
        steps.append(PipStep("the other packages", [*common, "-r", req_file], 0.23 if torch_reqs else 0.98,
                             len(self.requirements) - len(torch_reqs) + 2))
        return steps

    def run(self) -> Progress:
        """Install synchronously; returns the final progress (never raises for expected faults)."""
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self._log = open(self.log_path, "a", encoding="utf-8", errors="replace")
        except OSError as exc:
            return self._end(error=f"Cannot write the install log in {self.home}: {exc}")
        try:
            self._write_log(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} install into {self.home}")
            with _InstallLock(self.home):
                return self._run()
        except InstallError as exc:
            return self._end(error=str(exc))
        except Exception as exc:  # a bug: keep it in the log, show one line
            import traceback

            self._write_log(traceback.format_exc())
            return self._end(error=f"Install failed: {exc} (see {self.log_path})")
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _run(self) -> Progress:
        # refuse before touching anything
        if self.wheels_dir is not None:
            problem = check_wheels_folder(self.wheels_dir, self.requirements)
            if problem:
                raise InstallError(problem)
        else:
            if not self.allow_online:
                raise InstallError(ONLINE_OFF)
            plan = self.plan()
            if not plan.supported:
                raise InstallError(plan.description)
            self._write_log(f"plan: {plan.description}")
        (self.home / MARKER).unlink(missing_ok=True)  # from here on, incomplete until the end
        _atomic_write(self.home / "requirements.txt", "\n".join(self.requirements) + "\n")

        python = self._ensure_venv()
        steps = self.steps(python)
        base = VENV_SHARE
        for step in steps:
            self._check_cancel()
            share = (1.0 - VENV_SHARE) * step.share
            self._update(stage="packages", message=f"Installing {step.label}")
            self._pip(python, step, base, share)
            base += share
        self._check_cancel()
        self._update(message="Measuring the environment")
        size = dir_size(self.home / VENV_DIR)
        info = {"requirements": self.requirements, "python": python, "base_python": self._base_used,
                "torch_build": "offline" if self.wheels_dir else self.plan().torch_build,
                "wheels_dir": str(self.wheels_dir) if self.wheels_dir else None,
                "size_bytes": size, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _atomic_write(self.home / MARKER, json.dumps(info, indent=1))
        self._write_log(f"done: {size / 1e6:.0f} MB in {self.home / VENV_DIR}")
        return self._end(ok=True, size=size)

    _base_used: str = ""

    def _ensure_venv(self) -> str:
        py = venv_python(self.home)
        if py.exists() and python_version(str(py)) is not None:
            self._base_used = _venv_base(self.home) or ""
            self._update(stage="venv", fraction=VENV_SHARE, message="Using the existing engine environment")
            return str(py)
        venv = self.home / VENV_DIR
        if venv.exists():  # a cancelled or broken one: start it again (only our own folder)
            self._write_log(f"removing the unusable environment {venv}")
            shutil.rmtree(venv)
        base = self.base_python or find_base_python(self.blender_python)
        if not base:
            raise InstallError("No Python 3.10-3.14 that can make a virtual environment was found: install Python "
                               "from python.org, or set Engine Python to an environment you built")
        self._base_used = base
        self._update(stage="venv", message=f"Creating the engine environment with {base}")
        rc = self._spawn([base, "-m", "venv", str(venv)], None)
        self._check_cancel()
        if rc != 0 or not py.exists():
            raise InstallError(f"{base} could not create a virtual environment in {venv} (see {self.log_path})")
        self._update(fraction=VENV_SHARE)
        return str(py)

    def _pip(self, python: str, step: PipStep, base: float, share: float) -> None:
        args = list(step.args)
        if _pip_has_raw_progress(python):
            args = ["--progress-bar", "raw", *args]
        parser = PipOutput(self.progress, base, share, step.expected_packages)
        rc = self._spawn([python, "-m", "pip", "install", *args], parser)
        self._check_cancel()
        if rc != 0:
            reason = parser.errors[0] if parser.errors else f"pip exited with status {rc}"
            if self.wheels_dir is not None and "Could not find a version" in reason:
                reason += f" in {self.wheels_dir} (a wheel for this Python and platform is needed)"
            raise InstallError(f"Installing {step.label} failed: {reason} (see {self.log_path})")

    def _spawn(self, cmd: list[str], parser: PipOutput | None) -> int:
        self._write_log("$ " + " ".join(cmd))
        env = dict(self.environ)
        env.pop("PYTHONPATH", None)  # Blender's or the add-on's paths must not leak into the venv
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # cancel kills pip and whatever it started
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self._check_cancel()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self._proc = proc
        if self._cancel.is_set():
            _kill_tree(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            self._write_log(line.rstrip("\n"))
            if parser is not None:
                with self._lock:
                    parser.feed(line)
                self._notify()
        rc = proc.wait()
        self._proc = None
        self._write_log(f"(exit status {rc})")
        return rc

    # -- helpers ------------------------------------------------------------------------
    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise _CancelledInstall()

    def _update(self, **changes: object) -> None:
        with self._lock:
            for k, v in changes.items():
                if k == "fraction":
                    v = max(self.progress.fraction, float(v))  # the bar never goes back
                setattr(self.progress, k, v)
        self._notify()

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.snapshot())

    def _write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text + "\n")
            self._log.flush()

    def _end(self, ok: bool = False, error: str = "", size: int = 0) -> Progress:
        cancelled = self._cancel.is_set() and not ok
        with self._lock:
            p = self.progress
            p.finished, p.ok, p.cancelled = True, ok, cancelled
            p.bytes_done = p.bytes_total = 0
            if ok:
                p.stage, p.fraction, p.size_bytes = "done", 1.0, size
                p.message = f"Engine installed: {size / 1e9:.2f} GB in {self.home}"
            elif cancelled:
                p.stage, p.message, p.error = "cancelled", "Install cancelled: Install Engine resumes it", ""
            else:
                p.stage, p.error, p.message = "error", error, error
        self._write_log(f"result: {self.progress.stage} {self.progress.error}".rstrip())
        self._notify()
        return self.snapshot()


class _CancelledInstall(InstallError):
    def __init__(self) -> None:
        super().__init__("cancelled")


def _venv_base(home: Path) -> str | None:
    try:
        for ln in (Path(home) / VENV_DIR / "pyvenv.cfg").read_text().splitlines():
            k, _, v = ln.partition("=")
            if k.strip() in ("executable", "home"):
                return v.strip()
    except OSError:
        return None
    return None


def _pip_has_raw_progress(python: str) -> bool:
    """pip >= 24.1 prints ``Progress N of M`` lines with ``--progress-bar raw``."""
    try:
        out = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    m = re.match(r"pip (\d+)\.(\d+)", out)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (24, 1)


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (OSError, ProcessLookupError):
        pass


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _InstallLock:
    """One installer per folder (two Blender windows may both click Install Engine)."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "_InstallLock":
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(self.fd, str(os.getpid()).encode())
                return self
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise InstallError(f"Another install (process {pid}) is running in {self.path.parent}")
                self.path.unlink(missing_ok=True)  # stale
        raise InstallError(f"Cannot lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # be safe: the user can delete the lock file the message names
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state_summary(home: Path, requirements: Sequence[str]) -> dict:
    """JSON-friendly state (for the log and the UI)."""
    st = env_state(home, requirements)
    return {**asdict(st), "home": str(st.home), "python": str(st.python)}


if __name__ == "__main__":  # pragma: no cover - a manual entry point: python -m ... HOME REQS [WHEELS]
    reqs = read_requirements(Path(sys.argv[2]))
    inst = EngineInstaller(Path(sys.argv[1]), reqs, wheels_dir=Path(sys.argv[3]) if len(sys.argv) > 3 else None,
                           allow_online=len(sys.argv) <= 3,
                           on_progress=lambda p: print(f"{p.fraction:5.1%} {p.stage:10s} {p.text()}", flush=True))
    result = inst.run()
    print(result.message)
    sys.exit(0 if result.ok else 1)
