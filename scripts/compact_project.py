"""Re-store a trained project's baked maps in the compact store and print its size before/after.

    .venv/bin/python scripts/compact_project.py PROJECT

What a bake of this inve writes (core/project.py ``BakedMaps``): 8-bit atlases and alpha, no
stored usage maps, no all-zero alpha; segments keep no atlas PNGs (``inve atlas`` exports
them). Nothing is retrained: the maps keep their values to within half an 8-bit level and
their ``meta`` (the checkpoint they come from), so the project stays "trained". Segment atlas
PNGs are removed only while unchanged since inve wrote them. Holds the project's lock, like
every writer of its trained state. Projects already compact are left as they are.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import fsutil  # noqa: E402
from core.arraystore import folder_size, read_meta  # noqa: E402
from core.errors import InveError  # noqa: E402
from core.lock import project_lock  # noqa: E402
from core.project import BakedMaps, Project  # noqa: E402


def compact(project_dir: Path) -> tuple[int, int]:
    project = Project.open(project_dir)
    parts = project.segments() if project.is_segmented else [project]
    before = folder_size(project_dir)
    with project_lock(project_dir, "compact"):
        for part in parts:
            maps_dir = part.path / Project.MAPS
            stored = read_meta(maps_dir)
            if stored is None:
                raise InveError(f"{part.path} has no complete baked maps; train it first")
            if stored.get("store") == BakedMaps.STORE:
                continue
            maps = BakedMaps.load(maps_dir, mmap=False)
            maps.atlas_used = {}  # not stored any more (recomputed when exported)
            maps.save(maps_dir)
            if part is not project:
                for png in part.path.glob("atlas_*.png"):
                    if fsutil.is_ours(png):
                        png.unlink()
    return before, folder_size(project_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        before, after = compact(Path(argv[0]))
    except InveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{argv[0]}: {before / 1e6:.1f} MB ({before / 2**20:.1f} MiB) -> {after / 1e6:.1f} MB "
          f"({after / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
