"""Render an edit session's frames in several processes, results in frame order.

Why: the edit pass is many small per-frame steps (decode, drift refinement of the strokes,
texture lookups, compositing, PNG encoding) that keep one core busy in Python; threads do
not scale past the interpreter lock. After the session's frame-independent work is done
(:meth:`EditSession.prepare`), forked workers each render blocks of frames with their own
copy of the session (copy-on-write; the baked maps are memory-mapped, so shared) and their
own decoder, and hand back the finished frame (or its encoded PNG). Every frame is rendered
exactly as the single-process path renders it (a frame's result depends only on the
prepared layers and that frame), so the output is identical.

Workers are forked (POSIX ``fork``): where that is unavailable or unsafe (Windows, macOS)
callers render in-process. Memory stays bounded: at most ``workers + 1`` blocks (of fewer
frames for large frames) are handed out ahead of the frame the caller is waiting for.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import traceback
from typing import Any, Callable, Iterator

import numpy as np

from core.errors import InveError
from core.video import FrameRing

#: frames per block a worker renders in a row (its decoder then reads ahead without restarts),
#: fewer for large frames: at most AHEAD_BYTES of raw frames wait for the caller per worker
BLOCK = 8
AHEAD_BYTES = 24 * 2**20
#: shared memory of the pass's decoder (ring_slots): beyond it only the slots it cannot do without
RING_BYTES = 256 * 2**20
#: frames a worker's frame cache keeps beyond a block: refining a block up front reads the
#: block's frames and a few more (drawing frames, chain links) before compositing reads the
#: block's again, which must not restart the decoder
SETTLE_SPARE = 4


def block_frames(width: int, height: int) -> int:
    """Frames per block: BLOCK, fewer (down to 2) for frames larger than 640x480-ish."""
    return max(2, min(BLOCK, AHEAD_BYTES // max(1, 3 * width * height)))


def ring_slots(workers: int, block: int, frame_bytes: int = 0) -> int:
    """Frames the pass's shared decoder keeps (core.video.FrameRing): the blocks handed out
    ahead of the frame the caller waits for (``workers + 1``) and two more, so that the
    decoder is not held back by a worker rendering the oldest of them -- the two more only
    as far as RING_BYTES allows (frames of ``frame_bytes``): at 4K (25 MB a frame, blocks of
    2) four workers' 14 slots would take 350 MB of shared memory, 8K's 1.4 GB."""
    need, ahead = (workers + 1) * block, (workers + 3) * block
    if frame_bytes > 0:
        ahead = min(ahead, RING_BYTES // frame_bytes)
    return max(need, ahead)


def can_fork() -> bool:
    """Fork-based workers only on Linux (macOS's system libraries are not fork-safe)."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def default_workers(n_frames: int) -> int:
    """Worker processes for an edit pass of ``n_frames`` (1: render in this process)."""
    if not can_fork() or n_frames < 2 * BLOCK:
        return 1
    return max(1, min(os.cpu_count() or 1, 4, n_frames // BLOCK))


def _gap_frames(session: Any, frames: Any, workers: int) -> int:
    """How many frames before each block a worker reads ahead of rendering it (0: none), and
    the frame cache grown to keep them and a block.

    Only where drift refinement is on (its chain links lie in other workers' blocks) and the
    frames come from a decoder with a cache (a FrameSource; arrays need nothing).
    """
    if not getattr(session.ctx, "refine_enabled", False) or not hasattr(frames, "cache_frames"):
        return 0
    if getattr(session, "settled", lambda: False)():
        return 0  # every frame's refined geometry is kept (core/edits/geometry.py): no links to match
    ctx = session.ctx
    B = block_frames(ctx.W, ctx.H)
    gap = min(frames.MAX_SKIP, B * max(1, workers - 1))
    frames.cache_frames = max(frames.cache_frames, gap + B + 2)
    return gap


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when its parent dies.

    Why: a worker waits on its task queue, and holds that queue's write end itself, so a parent
    killed without cleanup (kill -9, the OOM killer, the add-on's kill after a cancel times out)
    would leave it waiting forever with its copy of the session and a decoder. Elsewhere (no
    prctl) nothing is done: workers are only forked on Linux.
    """
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _worker(session: Any, tasks: Any, results: Any, overlay: bool,
            encode: Callable[[np.ndarray], Any] | None, workers: int = 1, ring: Any = None, index: int = 0) -> None:
    """A forked worker (number ``index`` of ``workers``): render the blocks it is given until
    it gets None, reading the frames from ``ring`` (core.video.FrameRing) where one is given."""
    try:
        import signal  # noqa: PLC0415

        import torch  # noqa: PLC0415

        # the parent's handlers (a cancel token, a service's shutdown) are not ours: the parent
        # stops us (terminate) when it stops, and Ctrl-C reaches it, not us
        for name in ("SIGTERM", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_DFL if name == "SIGTERM" else signal.SIG_IGN)
        _die_with_parent()
        torch.set_num_threads(1)
        frames = session.ctx.frames
        if hasattr(frames, "forget_decoder"):
            frames.forget_decoder()  # the parent's decoder pipe is not ours to read
        if ring is not None:
            ring.join(index)
            frames.read_from(ring)
        gap = _gap_frames(session, frames, workers)
        # each block's refinement runs up front, in one call per layer (EditSession.settle_block),
        # reading the block's frames before they are composited: they must stay in the cache
        settle = getattr(session, "settle_block", None)
        if settle is not None and hasattr(frames, "cache_frames"):
            frames.cache_frames = max(frames.cache_frames, block_frames(session.ctx.W, session.ctx.H) + SETTLE_SPARE)
        after = 0  # the frame after this worker's previous block
        # a segmented session: blocks come in frame order, so the worker walks the segments as
        # a pass in one process does (opens each once, closes those it has left behind)
        walk = getattr(session, "enter", None)
        current = -1
        # what rendering finds of the layers' geometry goes back with the frame (the parent
        # keeps it for the next pass: core/edits/geometry.py)
        report = getattr(session, "frame_geometry", None)
        while (task := tasks.get()) is not None:
            start, end = task
            if gap:
                # decode the frames other workers rendered since our last block (forward: no
                # decoder restart) and match the chain links among them (core.refine.chain_parent,
                # RenderContext.visit): asked for later, a link's frame would restart the decoder
                # from the clip's start (hundreds of frames decoded again, late in a long shot)
                for t in range(max(after, start - gap), start):
                    if walk is not None:
                        current = walk(t, current)
                    frames[t]
                    session.visit(t)  # their chain links, while the frame is at hand
            after = end
            for t in range(start, end):
                if walk is not None:
                    before, current = current, walk(t, current)
                    if settle is not None and current != before and t != start:
                        settle(range(t, end))  # the block's frames in the segment entered here
                if settle is not None and t == start:
                    settle(range(start, end))
                img = session.render_frame(t, cache=False, overlay=overlay)
                session.visit(t)
                results.put((t, encode(img) if encode is not None else img, None,
                             report(t) if report is not None else None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        msg = str(exc) if isinstance(exc, InveError) else "".join(traceback.format_exception(exc))
        results.put((-1, None, (type(exc).__name__, msg, isinstance(exc, InveError)), None))
    finally:
        if ring is not None:
            ring.leave()  # the parent's decoder no longer waits for us
        results.close()
        results.join_thread()


def render_parallel(session: Any, workers: int, overlay: bool = False,
                    encode: Callable[[np.ndarray], Any] | None = None,
                    check: Callable[[], None] | None = None,
                    after_fork: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (project frame, frame or ``encode(frame)``) for every frame, in order, rendered by
    ``workers`` forked processes. ``session.prepare()`` must have run (it is shared by fork).

    ``check``: called while waiting for the workers (every second) and before a worker's
    error is raised; it raises what went wrong beside the workers (core/segments.py: the
    thread carrying the seams, whose failure the workers may wait on), which wins.
    ``after_fork``: called once the workers are forked and given their first blocks (what
    the caller starts beside them, which they must not inherit).
    Stopping the iteration early (an error downstream, a cancel) stops the workers.
    """
    T = session.ctx.T
    B = block_frames(session.ctx.W, session.ctx.H)
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(), ctx.Queue()
    frames = session.ctx.frames
    if hasattr(frames, "close"):
        frames.close()  # no decoder process shared with the children
    # one decoder for the pass, here, its frames shared with every worker (core.video.FrameRing)
    ring = FrameRing(frames, workers, ring_slots(workers, B, 3 * session.ctx.W * session.ctx.H)) if hasattr(frames, "read_from") else None
    blocks = [(s, min(T, s + B)) for s in range(0, T, B)]
    procs = [ctx.Process(target=_worker, args=(session, tasks, results, overlay, encode, workers, ring, i),
                         daemon=True, name=f"inve-render-{i}") for i in range(workers)]
    # multiprocessing's child start closes sys.stdin, which takes its lock: in a process where
    # another thread sits in stdin.readline() (the engine service's reader) that lock is held
    # at fork and the child would wait for it forever. Workers never read stdin.
    stdin, sys.stdin = sys.stdin, None
    try:
        for p in procs:
            p.start()
    finally:
        sys.stdin = stdin
    if ring is not None:
        ring.start()  # a thread: only after the forks
    sent = 0
    pending: dict[int, Any] = {}
    merge = getattr(session, "merge_geometry", None)

    def beside() -> None:
        # what went wrong beside the workers, which may be why they stopped: the caller's
        # (check) first, then the decoder's own error
        if check is not None:
            check()
        if ring is not None and ring.error is not None:
            raise ring.error

    try:
        for _ in range(min(len(blocks), workers + 1)):
            tasks.put(blocks[sent])
            sent += 1
        if after_fork is not None:
            after_fork()
        for t in range(T):
            while t not in pending:
                try:
                    got, payload, err, found = results.get(timeout=1.0)
                except queue.Empty:
                    beside()
                    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                    if dead:
                        raise InveError(f"a render worker stopped unexpectedly (exit code {dead[0].exitcode}); "
                                        "out of memory? try again with fewer frames") from None
                    continue
                if err is not None:
                    beside()
                    kind, msg, user = err
                    if user:
                        raise InveError(msg)
                    raise RuntimeError(f"a render worker failed ({kind}):\n{msg}")
                pending[got] = payload
                if found is not None and merge is not None:
                    merge(found)
            if t % B == 0 and sent < len(blocks):  # a block is being handed over: give out the next
                tasks.put(blocks[sent])
                sent += 1
            yield t, pending.pop(t)
    finally:
        for payload in pending.values():  # rendered ahead, never handed on (say, PNGs already written)
            getattr(payload, "discard", lambda: None)()
        if ring is not None:
            ring.close()
        for p in procs:
            if p.is_alive():
                tasks.put(None)
        for p in procs:
            p.join(timeout=0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
        tasks.close()
        results.close()
        tasks.cancel_join_thread()
        results.cancel_join_thread()
