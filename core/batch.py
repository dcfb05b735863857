"""``inve batch``: fit many shots, one project each, on Ray (or one after another here).

Why Ray and not a home-made queue: fitting is the long step and independent per shot; Ray
runs the same program on a laptop (a local cluster it starts itself) and on a cluster
(``--address``), schedules tasks by the resources they ask for (CPUs, a GPU) and retries a
task whose worker process died. The engine makes a retry cheap and safe: every shot is an
ordinary project trained by :func:`core.train.train_project`, which checkpoints every
``checkpoint_seconds`` and on cancel, and resumes from the last checkpoint; the project lock it
holds (:mod:`core.lock`) keeps two attempts from writing one project, and the lock of a killed
worker on the same host is stale at once (its pid is dead), so a retry never waits for it.

The flow: SHOTS.json is read and checked as a whole before anything starts (every problem
is one line); each shot is classified against what ``ROOT/<name>/`` already holds (new,
resume, finished); finished shots are skipped, the others become one Ray task each. Tasks
report progress and take cancel requests through one small actor (:class:`_Hub`); the
driver aggregates it into a bar per shot, or JSON lines carrying the shot name.

Without Ray (or with ``--local``) the same :func:`run_shot` runs in this process, one shot
after another: the same code path minus the scheduler.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core import fsutil
from core.errors import Cancelled, InveError
from core.progress import CancelToken, Progress

SHOT_FIELDS = ("name", "video", "frames", "iters", "minutes", "max_side", "masks", "device", "seed",
               "single_layer", "cpus", "checkpoint_seconds", "project")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# names that are special folders on Windows: a project there could not be opened everywhere
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
MAX_RETRIES = 3
INSTALL_HINT = ("Ray is not installed: install the batch extra (pip install 'inve-blender[batch]', or "
                "pip install '.[batch]' in the source folder), or pass --local to run the shots one after "
                "another in this process")


# -- SHOTS.json ----------------------------------------------------------------------------

@dataclass
class Shot:
    """One entry of SHOTS.json, paths resolved against the file's folder."""

    name: str
    video: Path
    frames: tuple[int, int] | None = None  # half-open; end -1 = to the end of the video
    iters: int | None = None
    minutes: float | None = None
    max_side: int | None = None
    masks: Path | None = None
    device: str = "auto"
    seed: int = 0
    single_layer: bool = False
    cpus: int = 1
    checkpoint_seconds: float | None = None
    project: Path | None = None  # the project folder when not ROOT/<name> (the Blender add-on's own layout)

    def folder(self, root: Path) -> Path:
        """Where this shot's project lives: its own ``project`` folder, else ``root/<name>``."""
        return self.project if self.project is not None else Path(root) / self.name

    @property
    def num_gpus(self) -> int:
        return 1 if self.device == "cuda" else 0

    def to_json(self) -> dict[str, Any]:
        """Plain data for a Ray task (no Path objects, so any worker can read it)."""
        return {"name": self.name, "video": str(self.video), "frames": list(self.frames) if self.frames else None,
                "iters": self.iters, "minutes": self.minutes, "max_side": self.max_side,
                "masks": str(self.masks) if self.masks else None, "device": self.device, "seed": self.seed,
                "single_layer": self.single_layer, "cpus": self.cpus,
                "checkpoint_seconds": self.checkpoint_seconds,
                "project": str(self.project) if self.project else None}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_shot(i: int, raw: Any, base: Path, problems: list[str]) -> Shot | None:
    where = f"shots[{i}]"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object with at least \"name\" and \"video\"")
        return None
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"shot {name!r}"
    start = len(problems)
    for key in raw:
        if key not in SHOT_FIELDS:
            problems.append(f"{where}: unknown field {key!r} (known: {', '.join(SHOT_FIELDS)})")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: \"name\" is missing or not a string")
    elif not NAME_RE.match(name) or name.lower().split(".")[0] in _RESERVED:
        problems.append(f"{where}: the name must be usable as a folder name: 1-64 letters, digits, '.', '_' "
                        "or '-', starting with a letter or digit")
    video = raw.get("video")
    video_path: Path | None = None
    if not isinstance(video, str) or not video:
        problems.append(f"{where}: \"video\" is missing or not a string")
    else:
        video_path = (base / video).resolve()
        if not video_path.exists():
            problems.append(f"{where}: video {video_path} does not exist")
    frames = raw.get("frames")
    frame_range: tuple[int, int] | None = None
    if frames is not None:
        if (not isinstance(frames, list) or len(frames) != 2 or not _is_int(frames[0])
                or not (frames[1] is None or _is_int(frames[1]))):
            problems.append(f"{where}: \"frames\" must be [START, END] (integers, END may be null for the end)")
        elif frames[0] < 0 or (frames[1] is not None and frames[1] <= frames[0]):
            problems.append(f"{where}: \"frames\" {frames} is empty or negative (END must be > START >= 0)")
        else:
            frame_range = (frames[0], -1 if frames[1] is None else frames[1])
    for key in ("iters", "max_side", "cpus"):
        v = raw.get(key)
        if v is not None and (not _is_int(v) or v <= 0):
            problems.append(f"{where}: \"{key}\" must be a positive integer, got {v!r}")
    for key in ("minutes", "checkpoint_seconds"):
        v = raw.get(key)
        if v is not None and (not _is_number(v) or not v > 0 or v != v or v == float("inf")):
            problems.append(f"{where}: \"{key}\" must be a positive number, got {v!r}")
    if raw.get("device", "auto") not in ("auto", "cpu", "cuda", "mps"):
        problems.append(f"{where}: \"device\" must be \"auto\", \"cpu\", \"cuda\" or \"mps\", "
                        f"got {raw.get('device')!r}")
    if "seed" in raw and not _is_int(raw["seed"]):
        problems.append(f"{where}: \"seed\" must be an integer, got {raw['seed']!r}")
    if "single_layer" in raw and not isinstance(raw["single_layer"], bool):
        problems.append(f"{where}: \"single_layer\" must be true or false")
    masks = raw.get("masks")
    masks_path: Path | None = None
    if masks is not None:
        if not isinstance(masks, str) or not masks:
            problems.append(f"{where}: \"masks\" must be a folder path")
        else:
            masks_path = (base / masks).resolve()
            if not masks_path.is_dir():
                problems.append(f"{where}: masks folder {masks_path} does not exist")
    project = raw.get("project")
    project_path: Path | None = None
    if project is not None:
        if not isinstance(project, str) or not project:
            problems.append(f"{where}: \"project\" must be a folder path")
        else:
            project_path = (base / project).resolve()
    if len(problems) > start:
        return None
    return Shot(name=name, video=video_path, frames=frame_range, iters=raw.get("iters"),  # type: ignore[arg-type]
                minutes=raw.get("minutes"), max_side=raw.get("max_side"), masks=masks_path,
                device=raw.get("device", "auto"), seed=raw.get("seed", 0),
                single_layer=raw.get("single_layer", False), cpus=raw.get("cpus", 1),
                checkpoint_seconds=raw.get("checkpoint_seconds"), project=project_path)


def load_shots(path: str | os.PathLike) -> list[Shot]:
    """Read and check SHOTS.json; every problem found is reported (one line each) at once."""
    path = Path(path)
    doc = fsutil.read_json(path, "shot list")
    if not isinstance(doc, dict) or not isinstance(doc.get("shots"), list):
        raise InveError(f"{path}: expected {{\"shots\": [{{\"name\": ..., \"video\": ...}}, ...]}}")
    if not doc["shots"]:
        raise InveError(f"{path}: the shot list is empty")
    problems: list[str] = []
    shots: list[Shot] = []
    base = path.resolve().parent
    for i, raw in enumerate(doc["shots"]):
        shot = _parse_shot(i, raw, base, problems)
        if shot is not None:
            shots.append(shot)
    seen: dict[str, str] = {}
    for raw in doc["shots"]:
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name:
            key = name.lower()  # one folder on case-insensitive file systems
            if key in seen:
                problems.append(f"shot {name!r}: the name is used twice (as {seen[key]!r} too); names must be "
                                "unique, ignoring case")
            else:
                seen[key] = name
    folders: dict[str, str] = {}
    for shot in shots:  # two shots must never train one project
        if shot.project is None:
            continue
        key = os.path.normcase(str(shot.project))
        if key in folders:
            problems.append(f"shot {shot.name!r}: its project folder {shot.project} is shot {folders[key]!r}'s too")
        else:
            folders[key] = shot.name
    if problems:
        raise InveError(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  "
                        + "\n  ".join(problems))
    return shots


# -- what ROOT/<name> already holds --------------------------------------------------------

def checkpoint_step(project_dir: Path) -> int | None:
    """The training step of the project's checkpoint (``None`` without one)."""
    from core.project import Project  # noqa: PLC0415

    path = project_dir / Project.CHECKPOINT
    if not path.is_file():
        return None
    import torch  # noqa: PLC0415

    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - a torn or foreign file: training starts over from it
        return None
    step = state.get("step") if isinstance(state, dict) else None
    return int(step) if isinstance(step, int) else None


def _adds_frames(project_frames: list[int], frames: tuple[int, int] | list[int] | None) -> bool:
    """The shot's ``frames`` contain the project's and more (a strip whose trim was widened
    after training): the shot resumes the project with the wider range, as ``inve train
    --resume --frames A:B`` does (new segments for the new frames; the trained ones stay)."""
    if not frames or not project_frames:
        return False
    a, b = int(frames[0]), int(frames[1])
    p0, p1 = project_frames[0], project_frames[-1] + 1
    return b != -1 and a <= p0 and b >= p1 and (a, b) != (p0, p1)


def shot_state(shot: Shot, root: Path) -> str:
    """``"new"``, ``"resume"`` or ``"finished"`` for a shot; InveError if its folder is not its project.

    Finished means: trained, its maps baked from its last checkpoint (``metrics.json``, written
    after the maps, names the checkpoint's step), and trained to this shot's budget.
    """
    from core.lock import LOCK_NAME  # noqa: PLC0415
    from core.project import Project  # noqa: PLC0415

    folder = shot.folder(root)
    if not (folder / Project.INFO).is_file():
        if folder.exists() and (not folder.is_dir() or any(p.name != LOCK_NAME for p in folder.iterdir())):
            raise InveError(f"shot {shot.name!r}: {folder} exists and is not an inve project; move it away or "
                            "rename the shot")
        return "new"
    project = Project.open(folder)
    info = project.info
    try:
        source = project.source_path().resolve()
    except InveError:
        source = Path(info.source).resolve()
    if source != shot.video:
        raise InveError(f"shot {shot.name!r}: {folder} holds a project of {info.source}, not of {shot.video}; "
                        "rename the shot or choose another ROOT")
    if shot.frames is not None:
        start, end = shot.frames
        if _adds_frames(info.frames, shot.frames):
            return "resume"  # the shot's frames contain the project's: segments add the new ones
        if info.frames[0] != start or (end != -1 and info.frames[-1] + 1 != end):
            raise InveError(f"shot {shot.name!r}: {folder} holds frames {info.frames[0]}:{info.frames[-1] + 1}, "
                            f"not {start}:{'' if end == -1 else end}; rename the shot or choose another ROOT")
    if not project.is_trained or not (folder / Project.METRICS).is_file():
        return "resume"
    try:
        metrics = json.loads((folder / Project.METRICS).read_text())
    except (OSError, ValueError):
        return "resume"
    if project.is_segmented:  # every segment checked by is_trained; iterations are their sum
        steps = [checkpoint_step(sub.path) for sub in project.segments()]
        if None in steps or metrics.get("iterations") != sum(steps):
            return "resume"
    elif metrics.get("iterations") != checkpoint_step(folder):
        return "resume"  # checkpoint newer than the maps: bake again (and train on if budget is left)
    stored = info.settings.get("train", {})
    if shot.iters is not None or shot.minutes is not None:
        if stored.get("iters") != shot.iters or stored.get("minutes") != shot.minutes:
            return "resume"  # another budget now: train on to it
    return "finished"


# -- one shot (in a Ray worker, or here) ---------------------------------------------------

class ShotProgress(Progress):
    """The engine's progress for one shot, forwarded as events carrying the shot's name.

    Progress updates are thinned to a few per second: they travel to the driver.
    """

    def __init__(self, name: str, emit: Callable[[dict[str, Any]], None], cancel: CancelToken,
                 min_interval: float = 0.25) -> None:
        super().__init__("none", cancel)
        self.name = name
        self._emit = emit
        self._interval = min_interval
        self._last: dict[str, float] = {}

    def update(self, stage: str, step: int, total: int, force: bool = False, **extra: Any) -> None:
        self.cancel.raise_if_cancelled()
        now = time.monotonic()
        last = self._last.get(stage)
        if not force and last is not None and step < total and now - last < self._interval:
            return
        self._last[stage] = now
        self._emit({"event": "progress", "shot": self.name, "stage": stage, "step": int(step), "total": int(total),
                    "time": time.time(), **extra})

    def message(self, text: str) -> None:
        self._emit({"event": "message", "shot": self.name, "message": text})


def run_shot(spec: dict[str, Any], root: str, emit: Callable[[dict[str, Any]], None], cancel: CancelToken,
             attempt: int = 1) -> dict[str, Any]:
    """Train one shot into ``root/<name>`` (new, or resumed from its checkpoint).

    Errors a user can cause come back as a ``failed`` result, a cancel as ``cancelled``
    (with the checkpoint saved by the engine); both end this shot only.
    """
    from core.project import Project  # noqa: PLC0415
    from core.train import DEFAULT_MAX_SIDE, TrainConfig, train_project  # noqa: PLC0415

    name = spec["name"]
    folder = Path(spec["project"]) if spec.get("project") else Path(root) / name
    try:
        # A folder with project.json is this shot's project (load_shots/shot_state checked
        # that): a retry or a rerun resumes it. train_project holds the project lock.
        resume = (folder / Project.INFO).is_file()
        extend = resume and _adds_frames(Project.open(folder).info.frames, spec["frames"])
        step = checkpoint_step(folder) if resume else None
        emit({"event": "shot", "shot": name, "state": "running", "attempt": attempt, "pid": os.getpid(),
              "host": socket.gethostname(), "resumed_from": step, "time": time.time()})
        # a resumed project keeps its frames (shot_state checked they are the shot's), unless
        # the shot adds frames to it (then like `inve train --resume --frames A:B`)
        cfg = TrainConfig(frames=tuple(spec["frames"]) if spec["frames"] and (extend or not resume) else None,
                          max_side=spec["max_side"] or DEFAULT_MAX_SIDE, masks=spec["masks"],
                          iters=spec["iters"], minutes=spec["minutes"], device=spec["device"],
                          seed=spec["seed"], single_layer=spec["single_layer"])
        if spec.get("checkpoint_seconds"):
            cfg.checkpoint_seconds = float(spec["checkpoint_seconds"])
        progress = ShotProgress(name, emit, cancel)
        project = train_project(spec["video"], folder, cfg, progress, resume=resume,
                                given={"video", "frames"} if extend else None)
        metrics = project.metrics()
    except Cancelled:
        return {"shot": name, "state": "cancelled", "message": "cancelled; the checkpoint is kept, rerun to resume"}
    except InveError as exc:
        return {"shot": name, "state": "failed", "message": str(exc)}
    except MemoryError:
        return {"shot": name, "state": "failed", "message": "out of memory; try a smaller max_side or fewer frames"}
    return {"shot": name, "state": "done", "project": str(folder.resolve()), "resumed_from": step,
            "metrics": metrics}


# -- Ray side --------------------------------------------------------------------------------

class _Hub:
    """A Ray actor between the driver and the shot tasks: events up, the cancel flag down."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cancelled = False
        self.starts: dict[str, int] = {}

    def start(self, name: str) -> int:
        self.starts[name] = self.starts.get(name, 0) + 1
        return self.starts[name]

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled


def _ray_shot(spec: dict[str, Any], root: str, hub: Any) -> dict[str, Any]:
    """The body of a shot's Ray task: run_shot with events and cancel through the hub."""
    import ray  # noqa: PLC0415

    cancel = CancelToken()
    stop = threading.Event()

    def watch() -> None:  # the driver's Ctrl-C reaches the trainer as a cancel request
        while not stop.wait(0.5):
            with contextlib.suppress(Exception):
                if ray.get(hub.is_cancelled.remote(), timeout=5):
                    cancel.cancel()
                    return

    # Ctrl-C at a terminal reaches the whole process group, workers included: there it is
    # a cancel request too (checkpoint, then stop), not a KeyboardInterrupt mid-step.
    import signal  # noqa: PLC0415

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    cancel.install_signal_handlers()
    watcher = threading.Thread(target=watch, name="inve-batch-cancel", daemon=True)
    watcher.start()
    try:
        if ray.get(hub.is_cancelled.remote()):  # queued when the batch was cancelled: never start
            return {"shot": spec["name"], "state": "cancelled", "message": "cancelled before it started"}
        attempt = ray.get(hub.start.remote(spec["name"]))
        return run_shot(spec, root, lambda e: hub.push.remote(e), cancel, attempt)
    finally:
        stop.set()
        for sig, handler in saved.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, handler)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _init_ray(address: str | None, cpus: int | None) -> None:
    import logging  # noqa: PLC0415

    # no usage reports, no dashboard: a batch must not reach the network on its own
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray  # noqa: PLC0415

    for name in ("ray", "ray._private", "ray.rllib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True, "ignore_reinit_error": True}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ray raises many kinds; the user needs one line
            raise InveError(f"cannot connect to the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}") \
                from None
    else:
        ray.init(num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)


# -- the driver ----------------------------------------------------------------------------

@dataclass
class _ShotView:
    name: str
    state: str = "queued"
    stage: str = ""
    step: int = 0
    total: int = 0
    iteration: int | None = None
    attempt: int = 0
    note: str = ""


class BatchDisplay:
    """Aggregates every shot's events: a bar per shot (terminal), JSON lines, or a line per change."""

    def __init__(self, progress: Progress, names: list[str]) -> None:
        self.progress = progress
        self.views = {n: _ShotView(n) for n in names}
        self.tty = progress.mode == "bar" and progress.stream.isatty()
        self._drawn = 0
        self._last_draw = 0.0

    def event(self, e: dict[str, Any]) -> None:
        view = self.views.get(e.get("shot", ""))
        if view is None:
            return
        kind = e.get("event")
        if self.progress.mode == "json":
            self.progress._emit_json(e)  # noqa: SLF001 - the same JSON-lines stream as every command
        if kind == "shot":
            state = e["state"]
            view.attempt = e.get("attempt", view.attempt)
            if state == "running" and view.state == "running":
                view.note = f"retrying (attempt {view.attempt}) from iteration {e.get('resumed_from') or 0}"
            elif state == "running" and e.get("resumed_from"):
                view.note = f"resumed from iteration {e['resumed_from']}"
            elif state in ("done", "failed", "cancelled", "skipped"):
                view.note = e.get("message", "") or view.note
                if state in ("done", "skipped"):
                    view.stage, view.step, view.total = "", 1, 1
            view.state = state
            self._line(view, force=True)
        elif kind == "progress":
            view.stage, view.step, view.total = e.get("stage", ""), e.get("step", 0), e.get("total", 0)
            if "iteration" in e:
                view.iteration = e["iteration"]
            self._line(view)

    def _render(self, v: _ShotView) -> str:
        width = 20
        frac = min(1.0, v.step / v.total) if v.total else 0.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        it = f" it {v.iteration}" if v.iteration is not None else ""
        return f"{v.name[:16]:>16} {v.state:<9} {v.stage:>10} [{bar}]{it} {v.note}"[:150]

    def _line(self, view: _ShotView, force: bool = False) -> None:
        if self.progress.mode != "bar":
            return
        stream = self.progress.stream
        if not self.tty:  # a log file: one line per change of state
            if force:
                stream.write(self._render(view).rstrip() + "\n")
                stream.flush()
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        if self._drawn:
            stream.write(f"\x1b[{self._drawn}F")
        for v in self.views.values():
            stream.write(self._render(v) + "\x1b[K\n")
        self._drawn = len(self.views)
        stream.flush()


def _summary(results: dict[str, dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def batch_command(shots_path: str | Path, root: str | Path, progress: Progress, address: str | None = None,
                  local: bool = False, cpus: int | None = None) -> dict[str, Any]:
    """Fit every shot of SHOTS.json into ``root/<name>``; see the module docstring."""
    shots = load_shots(shots_path)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InveError(f"the batch root {root} exists and is not a folder")
    states = {s.name: shot_state(s, root) for s in shots}  # every conflict is found before anything starts
    use_ray = not local
    if use_ray and not ray_available():
        raise InveError(INSTALL_HINT)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InveError(f"cannot create the batch root {root}: {exc.strerror or exc}") from None

    display = BatchDisplay(progress, [s.name for s in shots])
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for s in shots:
        if states[s.name] == "finished":
            results[s.name] = {"shot": s.name, "state": "skipped", "message": "already trained"}
            display.event({"event": "shot", "shot": s.name, "state": "skipped", "message": "already trained"})
        else:
            todo.append(s)
            display.event({"event": "shot", "shot": s.name, "state": "queued",
                           "message": "resumes" if states[s.name] == "resume" else ""})
    if todo:
        runner = _run_with_ray if use_ray else _run_here
        runner(todo, str(root.resolve()), display, progress.cancel, results, address=address, cpus=cpus)
    for s in shots:  # the final word on every shot
        r = results[s.name]
        if r["state"] != "skipped":
            display.event({"event": "shot", **r})
    failed = {n: r for n, r in results.items() if r["state"] == "failed"}
    if any(r["state"] == "cancelled" for r in results.values()):
        raise Cancelled("batch cancelled; checkpoints are kept: run the same command again to resume")
    if failed:
        raise InveError(f"{len(failed)} of {len(shots)} shots failed: "
                        + "; ".join(f"{n}: {r['message']}" for n, r in failed.items()))
    return {"root": str(root.resolve()), "shots": {n: r["state"] for n, r in results.items()},
            "summary": f"batch {root}: {_summary(results)}"}


def _run_here(todo: list[Shot], root: str, display: BatchDisplay, cancel: CancelToken,
              results: dict[str, dict[str, Any]], **_: Any) -> None:
    """One shot after another in this process (no Ray)."""
    for shot in todo:
        if cancel.cancelled:
            results[shot.name] = {"shot": shot.name, "state": "cancelled", "message": "not started"}
            continue
        results[shot.name] = run_shot(shot.to_json(), root, display.event, cancel)


@contextlib.contextmanager
def _protocol_stdout(progress: Progress):
    """With ``--progress json``, keep stdout for the JSON lines alone while Ray runs.

    Ray's own notices (a worker that died, say) are printed by its threads and by C++ code
    on file descriptor 1; a reader of the JSON-lines protocol must not meet them. They go to
    stderr instead, and the progress lines to a private copy of the original stdout.
    """
    if progress.mode != "json":
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    private = os.fdopen(os.dup(1), "w", buffering=1)
    old_stream = progress._stream  # noqa: SLF001
    progress._stream = private  # noqa: SLF001
    os.dup2(2, 1)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        private.flush()
        progress._stream = old_stream  # noqa: SLF001
        private.close()


def _run_with_ray(todo: list[Shot], root: str, display: BatchDisplay, cancel: CancelToken,
                  results: dict[str, dict[str, Any]], address: str | None = None, cpus: int | None = None) -> None:
    with _protocol_stdout(display.progress):
        _ray_batch(todo, root, display, cancel, results, address, cpus)


def _ray_batch(todo: list[Shot], root: str, display: BatchDisplay, cancel: CancelToken,
               results: dict[str, dict[str, Any]], address: str | None, cpus: int | None) -> None:
    import ray  # noqa: PLC0415

    _init_ray(address, cpus)
    try:
        have = ray.cluster_resources()
        for shot in todo:  # a task nobody can run would wait forever: say so instead
            if shot.num_gpus > have.get("GPU", 0):
                raise InveError(f"shot {shot.name!r} asks for a GPU (device cuda) but the Ray cluster has none")
            if shot.cpus > have.get("CPU", 0):
                raise InveError(f"shot {shot.name!r} asks for {shot.cpus} CPUs but the Ray cluster has "
                                f"{int(have.get('CPU', 0))}")
        hub = ray.remote(num_cpus=0)(_Hub).remote()
        task = ray.remote(_ray_shot)
        refs = {}
        for shot in todo:
            ref = task.options(num_cpus=shot.cpus, num_gpus=shot.num_gpus, max_retries=MAX_RETRIES,
                               retry_exceptions=False, name=f"inve-shot-{shot.name}").remote(shot.to_json(), root, hub)
            refs[ref] = shot.name
        pending = list(refs)
        cancel_sent = 0.0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.2)
            for e in ray.get(hub.drain.remote()):
                display.event(e)
            for ref in ready:
                name = refs[ref]
                try:
                    results[name] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a crash or a worker lost more often than retried
                    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                    results[name] = {"shot": name, "state": "failed",
                                     "message": f"the shot's task failed: {lines[-1] if lines else type(exc).__name__}"}
            if cancel.cancelled and not cancel_sent:
                ray.get(hub.cancel.remote())  # the shots checkpoint and stop at their next step
                cancel_sent = time.monotonic()
                display.progress.message("cancelling: every running shot saves its checkpoint ...")
        for e in ray.get(hub.drain.remote()):
            display.event(e)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
