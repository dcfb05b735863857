"""Fit: video -> preprocess -> train the layered atlas model -> bake, into a project folder.

The loop is budgeted by iterations and/or wall time; the learning-rate schedule follows
whichever budget is further along, so a 2-minute run and a 2000-iteration run both end with
a decayed rate. Checkpoints are written atomically every ``checkpoint_seconds`` and on
cancel; ``--resume`` continues from the last one towards the (total) budget. A non-finite
loss stops the run without saving the diverged state.

Who does what: the :class:`Trainer` owns the loop, the optimiser and checkpoints; the loss
dictionary is :class:`core.objectives.Objective`'s; learning rate, coarse-to-fine and the
inverse polish are callbacks from :mod:`core.schedules`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core import __version__, fsutil
from core.bake import atlas_psnr, bake
from core.device import pick_device
from core.errors import Cancelled, InveError
from core.model import LayeredAtlasModel, ModelConfig, config_from_json, config_to_json
from core.objectives import LossWeights, Objective
from core.progress import Progress
from core.project import BakedMaps, Project, ProjectInfo
from core.sampling import ErrorMap, TrainingData
from core.schedules import CoarseToFine, InversePolish, LearningRate, Schedule

DEFAULT_MAX_SIDE = 256
DEFAULT_MINUTES = 4.0
# Length-aware default budget: DEFAULT_MINUTES for the reference shot (40 frames at 256x192)
# growing with the square root of the work (frames x working pixels) up to MAX_DEFAULT_MINUTES.
# Square root, not linear: stratified sampling shares each step among all frames and
# neighbouring frames teach the same atlas, so quality per step falls much slower than 1/T.
REFERENCE_WORK = 40 * 256 * 192
MAX_DEFAULT_MINUTES = 12.0


def default_minutes(n_frames: int, work_size: tuple[int, int]) -> float:
    """The training budget used when neither --iters nor --minutes is given."""
    work = n_frames * work_size[0] * work_size[1]
    return round(min(MAX_DEFAULT_MINUTES, max(DEFAULT_MINUTES, DEFAULT_MINUTES * math.sqrt(work / REFERENCE_WORK))), 1)


@dataclass
class TrainConfig:
    """Everything that decides how a project is trained (stored in project.json)."""

    frames: tuple[int, int] | None = None
    max_side: int = DEFAULT_MAX_SIDE
    masks: str | None = None
    fg_hint: str | None = None  # HINTS.json: outlines grown into the masks (core/hints.py)
    iters: int | None = None
    minutes: float | None = None
    device: str = "auto"
    seed: int = 0
    single_layer: bool = False
    batch: int = 8192
    lr_table: float = 1e-2
    lr_mlp: float = 3e-3
    # A wall-time budget of at most ``short_minutes`` (a quick look at a shot; 0 turns it off,
    # as segments of a long shot do until it is measured there) trains with a cheaper step:
    # ``short_batch`` pixels at ``short_lr_table``, so ~1.7x the steps fit in the time, and
    # the larger rate lets the fewer pixels per step move as far.
    # Measured on cup 40:80 at 256x192, fits of the same CPU time as a minute's 810 steps of
    # 8192 pixels (scripts/profile_step.py --iters): 1380 steps of 4096 at 2e-2 give the
    # networks 32.39 dB, at 1e-2 32.21 dB, the 8192-pixel steps 32.03 dB.
    short_minutes: float = 2.0
    short_batch: int = 4096
    short_lr_table: float = 2e-2
    # ... and its rates decay less (to ``short_lr_final`` of the initial ones, not ``lr_final``):
    # ~1,500 steps are too few to spend the last third of them at a tenth of the rate. Fits of
    # 1,500 such steps (the iterations of a quiet minute), the networks' PSNR by final rate:
    # 0.03: 31.88 dB, 0.1: 32.56, 0.3: 33.10, 0.5: 33.01, 1 (no decay): 32.52.
    short_lr_final: float = 0.3
    # Share of each batch drawn where the colour error is largest (core.sampling.ErrorMap), the
    # rest uniform; 0: uniform. CPU fits only (on a GPU the map's per-step read-back would
    # stall the device; not measured there). Fits of 1,500 short-budget steps of cup 40:80
    # at 256x192 (scripts/profile_step.py --iters 1500), the networks' PSNR over every pixel:
    # seed 1 uniform 32.60 dB, half the batch by error 36.37 dB.
    error_share: float = 0.5
    lr_final: float = 0.1  # fraction of the initial rates reached at the end of the budget
    map_warmup: float = 0.0  # fraction of the budget over which mapping rates ramp up
    coarse_to_fine: float = 0.3  # fraction of the budget until every atlas level is in use
    # The last part of the budget trains only the inverse mappings, against forward mappings
    # that no longer move: the inverse otherwise lags the forward and the cycle error shows it.
    inverse_polish: float = 0.05
    checkpoint_seconds: float = 30.0
    # longer shots are split into overlapping segments of at most this many frames, each with
    # its own atlases (core/segments.py); None: the default rule (split above 60 frames into
    # segments of 40), 0: never split
    segment_frames: int | None = None
    segment_overlap: int = 0  # frames shared by consecutive segments (0: the default)
    # the final checkpoint without the optimizer's moments (2/3 of its size) and with every
    # hash table in float16 (compact_model): segments of a long shot, so their project stays
    # small; a later --resume restarts the moments
    compact_checkpoint: bool = False
    # write atlas_<layer>.png into the project folder after the bake, and the masks preview
    # into cache/ (for people to look at). Segments do not: their 8-bit atlases are already in
    # maps/ (the same bytes), `inve atlas` exports them as <segment>_atlas_<layer>.png
    atlas_images: bool = True
    # a new segment of a long shot starts from its trained neighbour (core/segments.py
    # warm_start): its atlases copied, its mappings and alpha distilled from the neighbour's
    # over the overlap (and held beyond it); False: every segment starts from scratch
    segment_warm_start: bool = False
    # set by core/segments.py for one new segment: {"checkpoint": neighbour's, "offset": frames
    # from this segment's first frame to the neighbour's, "frames": the neighbour's frame count}
    warm_start: dict[str, Any] | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides

    def short_budget(self, device_type: str = "cpu") -> bool:
        """Whether this budget trains with the short-budget step and schedule (see
        ``short_minutes``). CPU only: the cheaper step buys steps where a step's cost grows with
        its pixels; on a GPU a step of 4096 pixels costs about what 8192 do (launch-bound), so
        it would only lose quality, and a minute there is many more steps than ~1,500."""
        return device_type == "cpu" and self.minutes is not None and self.minutes <= self.short_minutes

    def step_settings(self, device_type: str = "cpu") -> tuple[int, float]:
        """(batch, table learning rate) for this budget (see ``short_budget``)."""
        if self.short_budget(device_type):
            return self.short_batch, self.short_lr_table
        return self.batch, self.lr_table

    def final_rate(self, device_type: str = "cpu") -> float:
        """The fraction of the initial learning rates reached at the end of this budget."""
        return self.short_lr_final if self.short_budget(device_type) else self.lr_final

    def budget(self) -> tuple[int | None, float | None]:
        if self.iters is None and self.minutes is None:
            return None, DEFAULT_MINUTES * 60
        return self.iters, None if self.minutes is None else self.minutes * 60


def default_schedules(cfg: TrainConfig, base_lrs: dict[str, float], device_type: str = "cpu") -> list[Schedule]:
    """The schedules of a full fit: decaying rates, coarse-to-fine atlas, inverse polish."""
    return [LearningRate(base_lrs, cfg.final_rate(device_type), cfg.map_warmup), CoarseToFine(cfg.coarse_to_fine),
            InversePolish(cfg.inverse_polish)]


# -- the loop ------------------------------------------------------------------------------

class Trainer:
    """The loop's state: model, optimiser, step, time spent, sampling generator.

    What is optimised lives in ``objective`` (core/objectives.py); when which phase and rate
    apply is decided by ``schedules`` (core/schedules.py), run in order before every step.
    """

    def __init__(self, model: LayeredAtlasModel, data: TrainingData, cfg: TrainConfig, mask_source: str,
                 schedules: list[Schedule] | None = None) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.mask_source = mask_source
        groups = model.param_groups()
        # a fine-tuning run (its own schedules: ``inve correct``) keeps the step it was given
        self.batch, lr_table = (cfg.step_settings(data.device.type) if schedules is None
                                else (cfg.batch, cfg.lr_table))
        self.base_lrs = {"map_tables": lr_table, "map_mlps": cfg.lr_mlp, "tables": lr_table, "mlps": cfg.lr_mlp}
        self.group_names = [k for k in groups if groups[k]]
        fused = data.device.type == "cpu" or data.device.type == "cuda"
        self.opt = torch.optim.Adam([{"params": groups[k], "lr": self.base_lrs[k], "name": k}
                                     for k in self.group_names], betas=(0.9, 0.99), eps=1e-15, fused=fused)
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, over all sessions
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.mse_ema: float | None = None
        self.objective = Objective(model, cfg.weights, data.half, mask_source)
        self.schedules: list[Schedule] = (default_schedules(cfg, self.base_lrs, data.device.type) if schedules is None
                                          else schedules)
        self.phase = "fit"  # or "polish" (set by schedules)
        self.errors: ErrorMap | None = None  # full fits on the CPU draw part of each batch by error
        if not 0.0 <= cfg.error_share <= 0.5:
            # the regularisers read the first half of a batch: more than half drawn by error
            # would feed them biased samples
            raise InveError(f"error_share must be between 0 and 0.5, got {cfg.error_share}")
        if cfg.error_share > 0 and schedules is None and data.device.type == "cpu":
            self.errors = ErrorMap(data.n, data.h, data.w)

    # budget --------------------------------------------------------------------------
    def fraction(self) -> float:
        iters, seconds = self.cfg.budget()
        fr = 0.0
        if iters:
            fr = max(fr, self.step / iters)
        if seconds:
            fr = max(fr, self.elapsed / seconds)
        return min(1.0, fr)

    def done(self) -> bool:
        iters, seconds = self.cfg.budget()
        return (iters is not None and self.step >= iters) or (seconds is not None and self.elapsed >= seconds)

    # one step ------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        fr = self.fraction()
        for schedule in self.schedules:
            schedule(self, fr)
        self.model.train()
        # only the full objective draws by error: the inverse polish trains the cycle term on the
        # whole batch (and computes no colour error, so the map would be stale)
        share = self.cfg.error_share if self.errors is not None and self.phase == "fit" else 0.0
        batch = self.data.sample(self.batch, self.gen, self.errors, share)
        total, terms = self.objective(batch, fr, self.phase)
        uniform_mse = None
        if self.errors is not None and "sq_err" in batch:
            self.errors.update(batch["pixel"], batch["sq_err"])
            # the running PSNR from the uniform part only (the drawn part is the worst pixels)
            uniform_mse = float(batch["sq_err"][: self.batch - int(self.batch * share)].mean()) / 3.0
        if not math.isfinite(float(total.detach())):
            bad = [k for k, v in terms.items() if not math.isfinite(v)]
            raise InveError(f"training diverged at step {self.step}: non-finite loss ({', '.join(bad) or 'total'}); "
                            "nothing was saved from this run past the last checkpoint; try another --seed "
                            "or --resume from the checkpoint")
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.step += 1
        if "rgb" in terms:
            mse = terms["rgb"] if uniform_mse is None else uniform_mse
            self.mse_ema = mse if self.mse_ema is None else 0.95 * self.mse_ema + 0.05 * mse
        return terms

    @property
    def psnr_estimate(self) -> float:
        return 10 * math.log10(1.0 / max(self.mse_ema or 1.0, 1e-12))

    # checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
                 "elapsed": self.elapsed, "generator": self.gen.get_state(), "mse_ema": self.mse_ema,
                 "model_config": config_to_json(self.model.cfg), "tool_version": __version__}
        if self.errors is not None:
            # a resumed fit goes on drawing where the fit was worst, not from a flat map (float16:
            # 1.4 MB for 458 frames at 256x192; the estimates need no more precision)
            state["error_map"] = self.errors.err.half()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("optimizer") and self._moments_fit(state["optimizer"]):
            self.opt.load_state_dict(state["optimizer"])
        # else the moments start again: a compact checkpoint keeps none, and an older layout's
        # (hash tables were [F, rows] before they became [rows, F]) would be applied to the
        # wrong entries: Adam loads moments of another shape without a word
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.gen.set_state(state["generator"])
        self.mse_ema = state.get("mse_ema")
        saved = state.get("error_map")
        if self.errors is not None and saved is not None and saved.numel() == self.errors.err.numel():
            self.errors.err.copy_(saved.float())
            self.errors._cdf = None
        # else (an older checkpoint, a compact one, another frame count) the map starts flat

    def _moments_fit(self, opt_state: dict[str, Any]) -> bool:
        """Whether every stored optimizer tensor has the shape of the parameter it belongs to."""
        params = [p for g in self.opt.param_groups for p in g["params"]]
        saved = [i for g in opt_state.get("param_groups", []) for i in g.get("params", [])]
        if len(saved) != len(params):
            return False
        for i, p in zip(saved, params):
            for v in opt_state.get("state", {}).get(i, {}).values():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                    return False
        return True

    def save(self, path: Path) -> None:
        fsutil.write_with(path, lambda tmp: torch.save(self.state(), tmp))


# -- project-level orchestration -----------------------------------------------------------

def _open_or_create(project_dir: Path, resume: bool) -> Project | None:
    """Existing project when resuming; refuse to clobber anything otherwise (call it under the lock)."""
    info_path = project_dir / Project.INFO
    if info_path.exists():
        if not resume:
            raise InveError(f"{project_dir} already holds a project; pass --resume to continue training it, "
                            "or choose a new folder")
        return Project.open(project_dir)
    if resume:
        raise InveError(f"--resume: {project_dir} holds no project to resume")
    if project_dir.exists():
        if not project_dir.is_dir():
            raise InveError(f"project path {project_dir} exists and is not a folder")
        from core.lock import LOCK_NAME  # noqa: PLC0415 - the caller's own lock is no content

        if any(p.name != LOCK_NAME for p in project_dir.iterdir()):
            raise InveError(f"{project_dir} is not empty and is not an inve project; choose an empty or new folder")
    return None


def _check_masks(masks: str | None) -> None:
    """A --masks that cannot be read is refused before anything is decoded into the project."""
    if not masks:
        return
    p = Path(masks)
    if not p.exists():
        raise InveError(f"--masks {masks}: no such folder")
    if not p.is_dir():
        raise InveError(f"--masks {masks} is a file; it must be a folder of mask images, one per frame")
    from core.video import list_images  # noqa: PLC0415

    if not list_images(p):
        raise InveError(f"--masks {masks} holds no images")


def _resume_settings(existing: Project, video: str | Path | None, cfg: TrainConfig,
                     given: set[str] | None) -> str:
    """Fill ``cfg`` from the project; refuse (naming each) settings that differ from it.

    ``given`` names the settings the caller set on purpose (``None``: all of them). Returns
    the source path to use (the stored one, or the same content found under a new name).
    """
    from core import video as vio  # noqa: PLC0415
    from core.identity import source_fingerprint  # noqa: PLC0415

    info = existing.info
    stored = info.settings.get("train", {})
    given = {"frames", "max_side", "video"} if given is None else given
    diffs = []
    start, end = info.frames[0], info.frames[-1] + 1
    if "frames" in given and cfg.frames is not None:
        a, b = cfg.frames
        if a != start or (b not in (-1, None) and b != end):
            diffs.append(f"--frames {a}:{'' if b in (-1, None) else b} (the project has {start}:{end}; "
                         "a range that contains it adds frames as new segments)")
    stored_side = int(stored.get("max_side", cfg.max_side))
    if "max_side" in given and cfg.max_side != stored_side:
        diffs.append(f"--max-side {cfg.max_side} (the project has {stored_side})")
    source = info.source
    if "video" in given and video is not None and Path(video).resolve() != Path(info.source).resolve():
        vp = Path(video)
        if not vp.exists():
            diffs.append(f"VIDEO {video} (not found; the project's source is {info.source})")
        else:
            want = info.source_fingerprint or (source_fingerprint(info.source) if Path(info.source).exists() else None)
            if want is None or source_fingerprint(vp) != want:
                diffs.append(f"VIDEO {video} (the project was trained on {info.source})")
            else:
                source = str(vp.resolve())  # the same footage, moved or renamed
    if diffs:
        raise InveError(f"--resume continues {existing.path} with its own settings; these differ: "
                        f"{'; '.join(diffs)}. Leave them out, or train into a new folder")
    cfg.frames = (start, end)
    cfg.max_side = stored_side
    cfg.single_layer = info.layers == ["bg"]
    if cfg.masks is None and cfg.fg_hint is None:
        # the masks source the project was trained with: user masks, or hints grown into masks
        cfg.masks, cfg.fg_hint = stored.get("masks"), stored.get("fg_hint")
    if cfg.iters is None and cfg.minutes is None:
        cfg.iters, cfg.minutes = stored.get("iters"), stored.get("minutes")
    return source


def _extends(existing: Project, cfg: TrainConfig, given: set[str] | None) -> bool:
    """``--resume --frames A:B`` asks for frames beyond the trained ones (segments add them)."""
    if cfg.frames is None or (given is not None and "frames" not in given):
        return False
    a, b = cfg.frames
    start, end = existing.info.frames[0], existing.info.frames[-1] + 1
    if b in (-1, None):
        from core import video as vio  # noqa: PLC0415

        try:
            b = vio.probe(str(existing.source_path())).n_frames
        except InveError:
            return False  # the source is gone: the resume says so itself
    return a <= start and b >= end and (a, b) != (start, end)


def _check_project_atlases(project_dir: Path) -> None:
    """The atlas PNGs in a project are replaced on every bake: refuse up front when the user
    changed one (painted it in place), rather than overwrite it or fail after training."""
    marker = fsutil.output_dir_state(project_dir)
    for layer in ("bg", "fg"):
        p = project_dir / f"atlas_{layer}.png"
        if not p.is_file():
            continue
        if marker is None:  # a project of inve 0.1: its atlases are the ones it wrote
            fsutil.record_output(p, fsutil.sha256_file(p))
            continue
        if not fsutil.is_ours(p):
            raise InveError(f"{p} was changed after inve wrote it (painted?); training would replace it: "
                            "move it out of the project (to use it as an 'atlas' edit layer), then run again")


def train_project(video: str | Path, project_dir: str | Path, cfg: TrainConfig, progress: Progress,
                  resume: bool = False, monitor: Callable[[Trainer], None] | None = None,
                  given: set[str] | None = None) -> Project:
    """Train (or resume) a project and bake it. Returns the opened project.

    Holds the project lock (``core.lock``) throughout: a second writer is refused with the
    holder's name, and the "already a project" check runs inside it. ``cfg`` is not changed
    (a resume works on a copy filled from the project). ``given`` names the settings the
    caller chose explicitly ("frames", "max_side", "video"; ``None``: all); a resume refuses
    those that differ from the project, naming each.

    ``monitor(trainer)`` is called after every step (benchmarks use it to measure quality
    over time); its own run time is not counted as training time.
    """
    from core.lock import project_lock  # noqa: PLC0415

    cfg = dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights), model=dict(cfg.model))
    project_dir = Path(project_dir)
    _check_masks(cfg.masks)
    if project_dir.exists() and not project_dir.is_dir():
        raise InveError(f"project path {project_dir} exists and is not a folder")
    if not resume and not (project_dir / Project.INFO).exists() and not Path(video).exists():
        raise InveError(f"video not found: {video}")
    created = not project_dir.exists()
    fsutil.probe_writable(project_dir, "project folder")
    try:
        with _lock_unless_ours(project_dir, project_lock):
            return _train_locked(video, project_dir, cfg, progress, resume, monitor, given)
    except BaseException:
        if created:  # refused before anything was written: leave no empty folder behind
            with contextlib.suppress(OSError):
                project_dir.rmdir()
        raise


def _lock_unless_ours(project_dir: Path, project_lock: Callable[..., Any]) -> Any:
    """The project lock, unless this very process holds it already (``inve batch`` takes it
    for a whole shot and calls :func:`train_project` inside)."""
    import socket  # noqa: PLC0415

    from core.lock import read_holder  # noqa: PLC0415

    holder = read_holder(project_dir) if project_dir.is_dir() else None
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return contextlib.nullcontext()
    return project_lock(project_dir, "train")


def _train_locked(video: str | Path, project_dir: Path, cfg: TrainConfig, progress: Progress, resume: bool,
                  monitor: Callable[[Trainer], None] | None, given: set[str] | None) -> Project:
    from core import checkpoint  # noqa: PLC0415
    from core import video as vio  # noqa: PLC0415
    from core.identity import source_fingerprint  # noqa: PLC0415
    from core.preprocess import preprocess, release_cache, working_frames  # noqa: PLC0415

    existing = _open_or_create(project_dir, resume)
    if existing is not None and (existing.is_segmented or _extends(existing, cfg, given)):
        from core.segments import train_segmented  # noqa: PLC0415

        return train_segmented(video, project_dir, existing, cfg, progress, monitor, given)
    if existing is None and cfg.segment_frames != 0:
        from core import segments  # noqa: PLC0415

        vinfo = vio.probe(str(Path(video).resolve()))
        start, end = vio.resolve_range(vinfo, cfg.frames)
        if len(segments.split_plan(start, end, cfg.segment_frames, cfg.segment_overlap)) > 1:
            if cfg.segment_frames is None:
                cfg.segment_frames = segments.DEFAULT_SEGMENT_FRAMES
            cfg.segment_overlap = cfg.segment_overlap or segments.DEFAULT_OVERLAP
            return segments.train_segmented(video, project_dir, None, cfg, progress, monitor, given)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.set_num_threads(_cpu_threads())

    if existing is not None:
        # A resume keeps the data settings of the project; new budgets replace old ones.
        source = _resume_settings(existing, video, cfg, given)
        _check_masks(cfg.masks)
        _check_project_atlases(project_dir)
        if Path(source).resolve() == Path(existing.info.source).resolve():
            source = str(existing.source_path())  # also found relative to the project
    else:
        source = str(Path(video).resolve())
    vinfo = vio.probe(source)
    start, end = vio.resolve_range(vinfo, cfg.frames)
    work = vio.working_size(vinfo.width, vinfo.height, cfg.max_side)
    fingerprint = source_fingerprint(source)
    if existing is not None:
        if tuple(existing.info.source_size) != (vinfo.width, vinfo.height):
            raise InveError(f"the source video {source} changed size since the project was made; "
                            "start a new project")
        if existing.info.source_fingerprint not in (None, fingerprint):
            raise InveError(f"the source video {source} is not the footage the project was trained on "
                            "(its content changed); put the original back or start a new project")
    vio.check_resources(end - start, (vinfo.width, vinfo.height), work, None)

    settings = {"train": _settings(cfg)}
    rel_source = _relative(source, project_dir)
    if existing is None:
        # Claim the folder first: a run cancelled while loading leaves a project that
        # `--resume` picks up, not an anonymous folder that the next run refuses.
        layers = ["bg"] if cfg.single_layer else ["bg", "fg"]
        fsutil.mark_output_dir(project_dir)  # the folder's marker records the atlas PNGs inve writes
        Project(project_dir, ProjectInfo(source=source, frames=list(range(start, end)),
                                         source_size=(vinfo.width, vinfo.height), work_size=work, fps=vinfo.fps,
                                         layers=layers, settings=settings, source_relative=rel_source,
                                         source_fingerprint=fingerprint)).save_info()
    if cfg.iters is None and cfg.minutes is None:
        cfg.minutes = default_minutes(end - start, work)
        settings = {"train": _settings(cfg)}
        progress.message(f"training budget {cfg.minutes:g} min for {end - start} frames at {work[0]}x{work[1]} "
                         "(the default grows with frames x pixels; set --minutes or --iters to choose)")
    frames = working_frames(project_dir / "cache", source, vinfo, start, end, work, progress)
    masks_dir = Path(cfg.masks) if cfg.masks else None
    if cfg.fg_hint and masks_dir is None:
        from core.hints import hint_masks  # noqa: PLC0415

        masks_dir = hint_masks(project_dir / "cache", frames, Path(cfg.fg_hint), (vinfo.width, vinfo.height),
                               list(range(start, end)), progress)
    prep = preprocess(project_dir / "cache", frames, masks_dir, cfg.single_layer, start, progress,
                      preview=cfg.atlas_images)
    layers = ["bg"] if prep.masks is None else ["bg", "fg"]
    if prep.masks is None and not cfg.single_layer:
        progress.message("no moving foreground found: training a single (background) layer")

    info = ProjectInfo(source=source, frames=list(range(start, end)), source_size=(vinfo.width, vinfo.height),
                       work_size=work, fps=vinfo.fps, layers=layers,
                       settings={**settings, "mask_source": prep.mask_source}, source_relative=rel_source,
                       source_fingerprint=fingerprint)
    project = Project(project_dir, info)
    project.save_info()

    ckpt_path = project_dir / Project.CHECKPOINT
    if existing is not None and ckpt_path.is_file():
        state = checkpoint.read_checkpoint(ckpt_path, device)  # damaged: one line, what to do
        checkpoint.check_belongs(state, info, ckpt_path)  # a copy from another project: refused
        try:
            mcfg = config_from_json(state["model_config"])
        except (KeyError, TypeError, ValueError):
            raise InveError(f"the checkpoint {ckpt_path} is not readable by this inve; delete it and "
                            "train again with --resume") from None
    else:
        state = None
        backend = "auto"
        mcfg = ModelConfig(n_frames=end - start, work_size=work, layers=tuple(layers), **cfg.model)
        from core.encoding import tinycudann_available  # noqa: PLC0415

        mcfg.backend = "tcnn" if backend == "auto" and tinycudann_available(device) else "torch"
    model = LayeredAtlasModel(mcfg, device=str(device))
    warm_seconds = 0.0
    if state is None and cfg.warm_start:  # a new segment next to a trained one
        from core.segments import warm_start  # noqa: PLC0415

        warm_seconds = warm_start(model, cfg.warm_start, device, progress)
    data = TrainingData(prep.frames, prep.flow, prep.masks, device)
    trainer = Trainer(model, data, cfg, prep.mask_source)
    if state is not None:
        trainer.load_state(state)
    trainer.elapsed += warm_seconds  # the warm start is spent from the segment's budget

    run_loop(trainer, ckpt_path, progress, monitor, info=info)
    if cfg.compact_checkpoint:  # before baking: the maps record the checkpoint they come from
        state = trainer.state()
        checkpoint.save_checkpoint(ckpt_path, {**state, "optimizer": None, "error_map": None,
                                               "model": compact_model(model)}, info)
    model.set_atlas_detail(1.0)
    progress.message(f"trained {trainer.step} iterations in {trainer.elapsed:.0f} s "
                     f"(running PSNR ~{trainer.psnr_estimate:.1f} dB); baking maps")
    # baking needs neither flow nor masks: free them before the maps are allocated (long shots)
    trainer.data = None  # type: ignore[assignment]
    del data
    prep.flow, prep.masks = None, None  # type: ignore[assignment]
    store = BakedMaps.writer(project_dir / Project.MAPS)  # maps go straight into memory-mapped files
    try:
        result = bake(model, prep.frames, info.source_size, progress, out=store.frame_array)
        # the maps remember the checkpoint they come from: a later checkpoint (a resume killed
        # before its bake) makes the project "needs bake" instead of silently mixing the two
        result.maps.meta = {**result.maps.meta, **checkpoint.maps_meta(info, ckpt_path, trainer.step)}
        result.maps.save(project_dir / Project.MAPS, store=store)
    except BaseException:
        store.abort()  # a cancelled bake leaves no temporary files (and the last maps, if any)
        raise
    for layer, atlas in result.maps.atlas.items():
        png = project_dir / f"atlas_{layer}.png"
        if cfg.atlas_images:
            fsutil.write_output_file(png, fsutil.png_writer(atlas), "project atlas")
        elif png.is_file() and fsutil.is_ours(png):  # an older bake's copy, now stale
            png.unlink()
    metrics = {"psnr": round(result.psnr, 3), "atlas_psnr": round(atlas_psnr(result.maps, prep.frames), 3),
               "iterations": trainer.step, "train_seconds": round(trainer.elapsed, 2),
               "cycle_error_px": {k: round(v, 4) for k, v in result.cycle_error_px.items()},
               "device": device.type, "backend": mcfg.backend, "layers": layers, "mask_source": prep.mask_source,
               "per_frame": result.per_frame(info.frames)}
    fsutil.write_json(project_dir / Project.METRICS, metrics)
    release_cache(project_dir / "cache")  # a finished project keeps what editing needs
    return Project.open(project_dir)


class ThreadChooser:
    """Keeps CPU training on the faster of all its threads and one thread, checking as it goes.

    Why: on two cores that other work shares (another program, a second fit), a step split
    over both threads keeps waiting for whichever thread the system has put aside: a 2-thread
    one-minute fit of cup 40:80 ran 421 steps while a test suite shared the machine (1,441
    with lighter load). Every ``period`` seconds of training the other setting
    is timed for ``probe`` steps (after one warm-up step) and the one with the shorter median
    step is kept; on a quiet machine that costs a few slower steps per period.
    """

    def __init__(self, threads: int, period: float = 10.0, probe: int = 8,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.options = (threads, 1)
        self.current = threads
        self.period, self.probe = period, probe
        self.set_threads = set_threads
        self.since = 0.0  # seconds of training at the current setting since the last probe
        self.recent: list[float] = []  # the latest step times at the current setting
        self.probing: list[float] | None = None  # step times of the setting being tried
        self.kept = threads

    def after_step(self, seconds: float) -> None:
        """Account one step of ``seconds`` (wall) and switch settings where that is due."""
        if self.probing is None:
            self.recent = (self.recent + [seconds])[-self.probe:]
            self.since += seconds
            if self.since >= self.period and len(self.recent) >= self.probe:
                self.kept, self.probing = self.current, []
                self.current = self.options[1] if self.current == self.options[0] else self.options[0]
                self.set_threads(self.current)
            return
        self.probing.append(seconds)
        if len(self.probing) <= self.probe:  # the first step after a switch is a warm-up
            return
        tried = self.probing[1:]
        if statistics.median(tried) >= statistics.median(self.recent):
            self.current = self.kept
            self.set_threads(self.current)
        else:
            self.recent = tried
        self.probing, self.since = None, 0.0


def run_loop(trainer: Trainer, ckpt_path: Path, progress: Progress,
             monitor: Callable[[Trainer], None] | None = None, info: ProjectInfo | None = None) -> None:
    """Train until the budget is spent; checkpoint periodically and on cancel.

    With ``info`` the checkpoints record the project's identity (``core.checkpoint``)."""
    def save() -> None:
        if info is None:
            trainer.save(ckpt_path)
        else:
            from core.checkpoint import save_checkpoint  # noqa: PLC0415

            save_checkpoint(ckpt_path, trainer.state(), info)

    iters, seconds = trainer.cfg.budget()
    last_ckpt = time.monotonic()
    threads = torch.get_num_threads()
    chooser = ThreadChooser(threads) if trainer.data.device.type == "cpu" and threads > 1 else None
    try:
        while not trainer.done():
            t0 = time.monotonic()
            trainer.train_step()
            step_seconds = time.monotonic() - t0
            trainer.elapsed += step_seconds
            if chooser is not None:
                chooser.after_step(step_seconds)
            if monitor is not None:
                monitor(trainer)
            fr = trainer.fraction()
            progress.update("train", int(round(fr * 1000)), 1000, psnr=round(trainer.psnr_estimate, 2),
                            iteration=trainer.step)
            if time.monotonic() - last_ckpt > trainer.cfg.checkpoint_seconds:
                save()
                last_ckpt = time.monotonic()
    except Cancelled:
        save()
        progress.message(f"cancelled at iteration {trainer.step}; checkpoint saved, continue with --resume")
        raise
    finally:
        if chooser is not None:
            torch.set_num_threads(threads)  # the bake and whatever follows get every thread again
    save()


#: tensors of at least this many values are stored in float16 by a compact checkpoint: the
#: hash tables (every MLP weight matrix is smaller and stays float32)
COMPACT_MIN_NUMEL = 4097


def _compactable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() >= COMPACT_MIN_NUMEL


def compact_model_state(state: dict[str, Any]) -> dict[str, Any]:
    """The model's tensors with every hash table in float16 (loading casts back to float32).

    Why: the tables are nearly all of a model. The atlas and alpha tables change colours and
    alpha by about 1e-4 (editing reads the baked atlases anyway); the mapping tables, which
    edits do run, move uv by under 1e-5 (0.001 working pixels on box.mp4's segments). Use
    :func:`compact_model` before baking, so the maps come from exactly these values.
    """
    return {k: (v.half() if _compactable(v) else v) for k, v in state.items()}


def compact_model(model: torch.nn.Module) -> dict[str, Any]:
    """Round the model's hash tables to float16 values in place; return the compact state.

    The maps baked afterwards, the networks that editing and ``--resume`` load from the
    compact checkpoint, and the metrics then all describe the same numbers.
    """
    with torch.no_grad():
        for value in model.state_dict(keep_vars=True).values():
            if _compactable(value):
                value.data.copy_(value.data.half().to(value.dtype))
    return compact_model_state(model.state_dict())


def _relative(source: str, project_dir: Path) -> str | None:
    """The source's path relative to the project folder (None across drives on Windows)."""
    try:
        return os.path.relpath(source, project_dir.resolve())
    except ValueError:
        return None


def _cpu_threads() -> int:
    """Threads for CPU training: all cores, unless a scheduler gave this process fewer.

    Ray (``inve batch``) and batch systems set ``OMP_NUM_THREADS`` to the CPUs a task was
    given; taking every core anyway would oversubscribe the machine when shots share it.
    """
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        given = 0
    return max(1, given if given > 0 else (os.cpu_count() or 1))


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["frames"] = list(cfg.frames) if cfg.frames else None
    return d


def train_command(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    fg_hint = getattr(args, "fg_hint", None)
    if fg_hint:
        from core.hints import check_hints_file  # noqa: PLC0415

        check_hints_file(Path(fg_hint), args.masks, args.single_layer)  # before any folder is made
        fg_hint = str(Path(fg_hint).resolve())
    cfg = TrainConfig(frames=args.frames, max_side=args.max_side or DEFAULT_MAX_SIDE, masks=args.masks,
                      iters=args.iters, minutes=args.minutes, device=args.device, seed=args.seed,
                      single_layer=args.single_layer, fg_hint=fg_hint,
                      segment_frames=getattr(args, "segment_frames", None),
                      segment_overlap=getattr(args, "segment_overlap", None) or 0)
    given = {"video"} | {name for name, value in (("frames", args.frames), ("max_side", args.max_side))
                         if value is not None}
    project = train_project(args.video, args.output, cfg, progress, resume=args.resume, given=given)
    metrics = project.metrics()
    return {"project": str(project.path.resolve()), **metrics,
            "summary": f"project {project.path}: PSNR {metrics['psnr']:.2f} dB after {metrics['iterations']} "
                       f"iterations ({metrics['train_seconds']:.0f} s)"}
