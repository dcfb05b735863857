"""The ``inve`` command line (contract fixed in ARCHITECTURE.md).

Each subcommand parses its arguments here and calls one function of the engine; errors a
user can cause arrive as :class:`~core.errors.InveError` and become one line on stderr and a
non-zero exit status (plus an ``error`` event with ``--progress json``).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from core import __version__
from core.errors import Cancelled, InveError
from core.progress import Progress

EXIT_ERROR = 2
EXIT_CANCELLED = 130


def _frame_range(text: str) -> tuple[int, int]:
    """Parse ``START:END`` (half-open, 0-based; either side may be empty)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--frames must look like START:END, got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        end = int(parts[1]) if parts[1].strip() else -1
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames must hold integers, got {text!r}") from None
    if start < 0 or (end != -1 and end <= start):
        raise argparse.ArgumentTypeError(f"--frames {text!r} is empty or negative (END must be > START >= 0)")
    return start, end


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inve", description="Interactive neural video editing: layered neural atlases.")
    p.add_argument("--version", action="version", version=f"inve {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="fit the layered atlas networks to a video and bake the maps")
    t.add_argument("video", help="movie file or folder of images")
    t.add_argument("-o", "--output", required=True, help="project folder to create (or resume)")
    t.add_argument("--frames", type=_frame_range, default=None, help="START:END, half-open, 0-based")
    t.add_argument("--max-side", type=_positive_int, default=None, help="working resolution: longest side in px")
    t.add_argument("--masks", default=None, help="folder of rough foreground masks, one PNG per frame")
    t.add_argument("--fg-hint", default=None,
                   help="HINTS.json: outline(s) of the foreground on one or a few frames, grown into masks")
    t.add_argument("--iters", type=_positive_int, default=None, help="training iterations")
    t.add_argument("--minutes", type=_positive_float, default=None, help="training time budget")
    t.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: CUDA, then Apple MPS, then the CPU")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue a project from its checkpoint")
    t.add_argument("--single-layer", action="store_true", help="one (background) layer only, no foreground")
    t.add_argument("--segment-frames", type=_non_negative_int, default=None,
                   help="split shots longer than this into overlapping segments of at most this many frames, "
                        "each with its own atlases (default: shots above 60 frames into segments of 40; "
                        "0: never split)")
    t.add_argument("--segment-overlap", type=_positive_int, default=None,
                   help="frames shared by consecutive segments (default 4)")
    t.add_argument("--progress", choices=("bar", "json", "none"), default="bar")

    k = sub.add_parser("track", help="track points through every frame")
    k.add_argument("project")
    k.add_argument("--points", required=True, help="POINTS.json")
    k.add_argument("-o", "--output", required=True, help="TRACKS.json to write")
    k.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    e = sub.add_parser("edit", help="propagate an edit stack to every frame")
    e.add_argument("project")
    e.add_argument("--edits", required=True, help="EDITS.json")
    e.add_argument("-o", "--output", required=True, help="folder of PNGs, or a .mp4/.mov/.mkv movie")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output movie")
    e.add_argument("--overlay", action="store_true",
                   help="RGBA PNGs of the edits only (transparent elsewhere), to lay over the original")
    e.add_argument("--progress", choices=("bar", "json", "none"), default="bar")

    c = sub.add_parser("correct", help="fine-tune a trained project with hand-confirmed positions, then re-bake")
    c.add_argument("project")
    c.add_argument("--corrections", required=True, help="CORRECTIONS.json")
    c.add_argument("--minutes", type=_positive_float, default=None, help="fine-tuning budget (default 0.5)")
    c.add_argument("--progress", choices=("bar", "json", "none"), default="bar")

    a = sub.add_parser("atlas", help="write the atlas images (to paint on)")
    a.add_argument("project")
    a.add_argument("-o", "--output", required=True, help="folder for the atlas PNGs")

    i = sub.add_parser("info", help="print a project's settings and metrics as JSON")
    i.add_argument("project")

    s = sub.add_parser("serve", help="persistent engine service: JSON-line requests on stdin, replies on stdout")
    s.add_argument("--max-projects", type=_positive_int, default=4,
                   help="projects kept warm at once; the least recently used is closed (default 4)")
    s.add_argument("--patch-cache-mb", type=float, default=None, metavar="MB",
                   help="memory for the layers' rendered frames kept between Propagates, all projects "
                        "together (default 256; 0 keeps none)")

    b = sub.add_parser("batch", help="fit many shots (SHOTS.json), one project each, on Ray")
    b.add_argument("shots", help="SHOTS.json")
    b.add_argument("-o", "--output", required=True, help="ROOT folder: each shot becomes ROOT/<name>/")
    b.add_argument("--address", default=None, help="Ray cluster to use (default: a local cluster on this machine)")
    b.add_argument("--cpus", type=_positive_int, default=None, help="CPUs of the local cluster (default: all)")
    b.add_argument("--local", action="store_true", help="no Ray: run the shots one after another in this process")
    b.add_argument("--progress", choices=("bar", "json", "none"), default="bar")

    d = sub.add_parser("demo", help="the bundled clip, end to end: train, edit, render, contact sheet")
    d.add_argument("-o", "--output", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--minutes", type=_positive_float, default=None, help="training time budget")
    d.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    return p


def _info(project_dir: str) -> dict:
    from core.project import Project

    proj = Project.open(project_dir)
    state, why = proj.state()
    metrics = proj.metrics()
    out = {"project": str(proj.path.resolve()), "trained": state == "trained", "state": state,
           **proj.info.to_json(), "metrics": metrics, "size_on_disk": proj.size_on_disk()}
    if why:
        out["state_reason"] = why
    if state == "needs bake":
        out["next_step"] = f"inve train VIDEO -o {proj.path} --resume  (re-bakes the maps)"
    if proj.is_segmented:
        from core.segments import segments_info  # noqa: PLC0415

        out["segments"] = segments_info(proj)
    if "per_frame" in metrics:
        from core.confidence import frame_summary  # noqa: PLC0415

        out["confidence"] = frame_summary(metrics["per_frame"])
    return out


def run(args: argparse.Namespace, progress: Progress) -> dict:
    """Dispatch one parsed command; returns the result reported with the ``done`` event."""
    if args.command == "train":
        from core.train import train_command

        return train_command(args, progress)
    if args.command == "track":
        from core.track import track_command

        return track_command(Path(args.project), Path(args.points), Path(args.output), overwrite=args.overwrite)
    if args.command == "edit":
        from core.edits import edit_command

        return edit_command(Path(args.project), Path(args.edits), Path(args.output), progress,
                            overwrite=args.overwrite, overlay=args.overlay)
    if args.command == "atlas":
        from core.atlas_io import export_atlases

        return export_atlases(Path(args.project), Path(args.output))
    if args.command == "correct":
        from core.correct import correct_project

        return correct_project(Path(args.project), Path(args.corrections), args.minutes, progress)
    if args.command == "info":
        return _info(args.project)
    if args.command == "serve":
        from core.serve import serve_command

        return serve_command(max_projects=args.max_projects, patch_cache_mb=args.patch_cache_mb)

    if args.command == "batch":
        from core.batch import batch_command

        if args.local and args.address:
            raise InveError("--local runs the shots here without Ray; it cannot be combined with --address")
        return batch_command(args.shots, args.output, progress, address=args.address, local=args.local,
                             cpus=args.cpus)
    if args.command == "demo":
        from core.demo import demo_command

        return demo_command(Path(args.output), progress, minutes=args.minutes)
    raise InveError(f"unknown command {args.command!r}")


def _join_option_values(argv: Sequence[str]) -> list[str]:
    """``--frames -1:3`` -> ``--frames=-1:3``: argparse takes a value starting with '-' for an
    option and would say "expected one argument"; joined, the range check explains the problem."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("--frames", "--minutes", "--iters", "--max-side", "--seed"):
            nxt = next(it, None)
            if nxt is not None and nxt.startswith("-") and len(nxt) > 1 and nxt[1:2] not in ("-",) \
                    and not nxt[1:2].isalpha():
                out.append(f"{a}={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


# destination errors that libraries raise directly (not through core.fsutil): one line each
_DESTINATION_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def main(argv: Sequence[str] | None = None) -> int:
    argv = _join_option_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    progress = Progress(getattr(args, "progress", "bar"))
    progress.cancel.install_signal_handlers()
    try:
        result = run(args, progress)
    except Cancelled as exc:
        progress.error(str(exc))
        sys.stderr.write(f"inve: {exc}\n")
        return EXIT_CANCELLED
    except InveError as exc:
        progress.error(str(exc))
        sys.stderr.write(f"inve: error: {exc}\n")
        return EXIT_ERROR
    except OSError as exc:
        if exc.errno not in _DESTINATION_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        from core.fsutil import describe_os_error

        msg = f"cannot write {exc.filename or 'the output'}: {describe_os_error(exc)}"
        progress.error(msg)
        sys.stderr.write(f"inve: error: {msg}\n")
        return EXIT_ERROR
    except MemoryError:
        msg = ("out of memory; try a smaller --max-side or fewer --frames" if args.command in ("train", "batch")
               else "out of memory; close other programs, or work on a project with fewer frames")
        progress.error(msg)
        sys.stderr.write(f"inve: error: {msg}\n")
        return EXIT_ERROR
    if args.command == "info":
        print(json.dumps(result, indent=2))
    elif progress.mode == "json":
        progress.done(**result)
    else:
        progress.done()
        if result:
            summary = result.get("summary")
            if summary:
                print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
