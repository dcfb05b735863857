"""*Train All Strips*: the sequencer's movie strips as one ``inve batch`` (no bpy).

Why one batch and not a Train per strip: fitting is the long step and independent per shot;
``inve batch`` runs the shots on Ray (a local cluster, or the cluster at the address set in
the preferences) and reports every shot's progress as JSON lines carrying the shot's name.
The add-on turns strips into a SHOTS.json document here, and folds the engine's events back
into one state per strip for the panel.

Each strip's shot trains the project exactly where the single-strip Train puts it (the
shot's ``project`` field), so preview, Propagate and Track find it by the usual identity
rule (source fingerprint + frame range). Strips that show the same project (a blade cut's
halves covered by one project, a duplicate) share one shot: two shots never train one folder.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .worker import ProgressState, Worker, _number

# the engine's rule for shot names (core/batch.py NAME_RE): usable as a folder name anywhere
NAME_MAX = 64
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
TERMINAL = ("done", "failed", "cancelled")
LOCAL_NOTICE = ("Ray is not installed in the engine's Python: the strips train one after another on this "
                "machine (install the engine's batch extra, pip install 'inve-blender[batch]', for Ray)")


@dataclass(frozen=True)
class StripShot:
    """One strip as the batch sees it: what Train would train, and where."""

    strip: str  # the strip's name in the sequencer
    video: str  # absolute path of its movie file
    frames: tuple[int, int]  # source frames, half-open
    project: str  # the engine project folder (``<workspace>/project``)


@dataclass
class BatchPlan:
    """The shots of a batch and which strips each one trains."""

    shots: list[StripShot]  # one per project folder, in strip order
    names: list[str]  # the shots' names, unique and filesystem-safe
    strips: dict[str, list[str]]  # shot name -> the strips it trains

    def shot_of(self, strip: str) -> str | None:
        return next((n for n, s in self.strips.items() if strip in s), None)


def safe_name(text: str) -> str:
    """A shot name from a strip name: letters, digits, '.', '_' and '-', starting with a
    letter or digit, at most :data:`NAME_MAX` characters, never a reserved device name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip("._-")
    name = name[:NAME_MAX].rstrip(".") or "strip"
    if name.lower().split(".")[0] in _RESERVED:
        name = f"strip_{name}"[:NAME_MAX]
    return name


def unique_names(texts: Sequence[str]) -> list[str]:
    """:func:`safe_name` of each, made unique ignoring case (one folder on macOS and Windows):
    later duplicates get ``-2``, ``-3``, ..."""
    taken: set[str] = set()
    out: list[str] = []
    for text in texts:
        base = safe_name(text)
        name, n = base, 1
        while name.lower() in taken:
            n += 1
            suffix = f"-{n}"
            name = base[:NAME_MAX - len(suffix)] + suffix
        taken.add(name.lower())
        out.append(name)
    return out


def plan(strips: Sequence[StripShot]) -> BatchPlan:
    """Group strips by project folder (one shot each) and name the shots after their first strip.

    A shot trains every frame its strips show: the union of their ranges (a strip whose trim
    was widened next to a duplicate that was not: the project grows to the wider one)."""
    by_folder: dict[str, list[StripShot]] = {}
    for s in strips:
        by_folder.setdefault(os.path.normcase(os.path.normpath(s.project)), []).append(s)
    groups = list(by_folder.values())
    names = unique_names([g[0].strip for g in groups])
    shots = [dataclasses.replace(g[0], frames=(min(s.frames[0] for s in g), max(s.frames[1] for s in g)))
             for g in groups]
    return BatchPlan(shots=shots, names=names,
                     strips={n: [s.strip for s in g] for n, g in zip(names, groups)})


def shots_doc(p: BatchPlan, max_side: int, minutes: float, device: str, single_layer: bool) -> dict[str, Any]:
    """SHOTS.json for the plan: every shot with its strip's source range and the panel's
    quality and time budget, its project in the add-on's own place (absolute paths)."""
    shots = []
    for name, s in zip(p.names, p.shots):
        shot: dict[str, Any] = {"name": name, "video": os.path.abspath(s.video), "frames": [int(s.frames[0]),
                                                                                           int(s.frames[1])],
                                "max_side": int(max_side), "minutes": float(minutes), "device": device,
                                "project": os.path.abspath(s.project)}
        if single_layer:
            shot["single_layer"] = True
        shots.append(shot)
    return {"shots": shots}


def batch_args(shots_file: str, root: str, address: str, ray_installed: bool) -> tuple[list[str], str]:
    """Arguments of ``inve batch`` and the notice to show (empty if none).

    ``address`` empty: a local Ray cluster. Without Ray in the engine's Python the shots run
    one after another in the worker (``--local``), which the notice says.
    """
    args = [shots_file, "-o", root, "--progress", "json"]
    if not ray_installed:
        return [*args, "--local"], LOCAL_NOTICE
    if address.strip():
        args += ["--address", address.strip()]
    return args, ""


# -- the engine's events -> one state per strip ----------------------------------------------

@dataclass
class ShotState:
    """What the panel shows for one shot (and so for each of its strips)."""

    name: str
    state: str = "queued"  # queued | training | done | failed | cancelled
    stage: str = ""
    step: int = 0
    total: int = 0
    psnr: float | None = None
    message: str = ""
    attempt: int = 0
    resumed_from: int | None = None  # the checkpoint's iteration this run started from

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return min(1.0, max(0.0, self.step / self.total)) if self.total > 0 else 0.0

    def line(self) -> str:
        """One line: ``training train 45% | PSNR 28.10 dB``, ``failed: <message>``, ..."""
        psnr = f"PSNR {self.psnr:.2f} dB" if self.psnr is not None else ""
        if self.state == "training":
            parts = [f"training {self.stage} {int(self.fraction * 100)}%" if self.stage else "training", psnr,
                     self.message]
        elif self.state == "done":
            parts = ["done", psnr, self.message]
        elif self.state in ("failed", "cancelled"):
            if not self.message or self.message.lower().startswith(self.state):  # the engine's "cancelled; ..."
                return self.message or self.state
            return f"{self.state}: {self.message}"
        else:
            parts = ["queued", self.message]
        return " | ".join(p for p in parts if p)


class BatchTracker:
    """Folds ``inve batch --progress json`` events into a :class:`ShotState` per shot.

    The engine's ``shot`` events carry ``state`` (queued, running, done, skipped, failed,
    cancelled); its ``progress`` events the shot's stage, step, total and PSNR. An event
    for an unknown shot is ignored; events never raise.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.shots = {n: ShotState(n) for n in names}

    def apply(self, ev: Mapping[str, Any]) -> bool:
        """Fold one event in; False if it is not about one of the shots."""
        sh = self.shots.get(str(ev.get("shot", "")))
        if sh is None:
            return False
        kind = ev.get("event")
        if kind == "shot":
            state = ev.get("state")
            msg = str(ev.get("message") or "")
            if state == "queued":
                sh.state, sh.message = "queued", "resumes" if msg == "resumes" else ""
            elif state == "running":
                sh.state = "training"
                attempt = _number(ev.get("attempt"))
                sh.attempt = int(attempt) if attempt is not None else sh.attempt
                resumed = _number(ev.get("resumed_from"))
                sh.resumed_from = int(resumed) if resumed is not None else None
                sh.message = (f"attempt {sh.attempt}, from iteration {int(resumed or 0)}" if sh.attempt > 1
                              else f"resumed from iteration {int(resumed)}" if resumed else "")
            elif state in ("done", "skipped"):
                sh.state = "done"
                metrics = ev.get("metrics") if isinstance(ev.get("metrics"), dict) else {}
                psnr = _number(metrics.get("psnr"))
                sh.psnr = psnr if psnr is not None else sh.psnr
                sh.message = "already trained" if state == "skipped" else ""
                sh.stage, sh.step, sh.total = "", 1, 1
            elif state in ("failed", "cancelled"):
                sh.state = state
                sh.message = msg.strip().splitlines()[0] if msg.strip() else sh.message
        elif kind == "progress" and sh.state not in TERMINAL:
            sh.state = "training"
            sh.stage = str(ev.get("stage", ""))
            step, total = _number(ev.get("step")), _number(ev.get("total"))
            sh.step, sh.total = int(step or 0), int(total or 0)
            psnr = _number(ev.get("psnr"))
            if psnr is not None:
                sh.psnr = psnr
        return True

    def end(self, cancelled: bool, error: str) -> None:
        """The batch process ended: a shot the engine said nothing final about shares its end."""
        for sh in self.shots.values():
            if sh.state in TERMINAL:
                continue
            if cancelled:
                sh.message = "not started" if sh.state == "queued" else "the checkpoint is kept: Train All resumes"
                sh.state = "cancelled"
            else:
                sh.state = "failed"
                sh.message = (error or "the batch ended without training it").strip().splitlines()[0]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sh in self.shots.values():
            out[sh.state] = out.get(sh.state, 0) + 1
        return out

    def summary(self) -> str:
        order = ("done", "training", "queued", "failed", "cancelled")
        c = self.counts()
        return ", ".join(f"{c[k]} {k}" for k in order if c.get(k))

    @property
    def fraction(self) -> float:
        return sum(s.fraction for s in self.shots.values()) / len(self.shots) if self.shots else 0.0


class BatchWorker(Worker):
    """The ``inve batch`` process: a :class:`Worker` whose per-shot events feed a
    :class:`BatchTracker`; its own state shows the whole batch (fraction and a summary line)."""

    def __init__(self, cmd: Sequence[str], names: Sequence[str], env: Mapping[str, str] | None = None,
                 title: str = "") -> None:
        super().__init__(cmd, env=env, title=title)
        self.tracker = BatchTracker(names)

    def _drain(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            if ev is None or self.tracker.apply(ev):
                continue
            self.state.apply(ev)  # the batch's own done / error / message
        self._summarize(self.state)

    def _summarize(self, st: ProgressState) -> None:
        n = 1000 * len(self.tracker.shots)
        st.stage, st.step, st.total = "", int(round(self.tracker.fraction * n)), n
        st.message = self.tracker.summary()

    def _finish(self) -> None:
        super()._finish()
        st = self.state
        self.tracker.end(cancelled=st.cancelled, error="" if st.ok else st.error)
        self._summarize(st)


def finished_line(tracker: BatchTracker, state: ProgressState) -> str:
    """The outcome line of a finished batch, for the panel and the report."""
    c = tracker.counts()
    total = len(tracker.shots)
    if state.cancelled:
        return (f"Train All cancelled ({c.get('done', 0)} of {total} done); checkpoints are kept: "
                "Train All again resumes")
    if c.get("failed"):
        return f"Train All: {c.get('done', 0)} of {total} done, {c['failed']} failed"
    if not state.ok:
        return f"Train All failed: {state.error}"
    return f"Train All: {total} of {total} done"


def strip_rows(tracker: BatchTracker, strips: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str]]:
    """(strip, state, line) for every strip of the batch (``strips``: shot -> its strips), in
    the batch's order: what the .blend keeps of a Train All."""
    return [(strip, sh.state, sh.line()) for shot, names in strips.items()
            if (sh := tracker.shots.get(shot)) is not None for strip in names]


__all__ = ["BatchPlan", "BatchTracker", "BatchWorker", "LOCAL_NOTICE", "ShotState", "StripShot", "batch_args",
           "finished_line", "plan", "safe_name", "shots_doc", "strip_rows", "unique_names"]
