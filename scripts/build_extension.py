#!/usr/bin/env python3
"""Build the installable Blender extension zip (Install from Disk) with Blender's own tool.

The zip bundles the engine: ``blender_manifest.toml`` (top level of the repository) and
``inve_blender/`` form the add-on, and ``core/`` is copied to ``inve_blender/engine/core`` in a staging
folder, with ``engine/requirements.txt`` (from pyproject.toml) for the add-on's dependency
installer, so what a user installs is the add-on and the exact engine it was tested with (less
what only the command line's demo uses: ``ENGINE_EXCLUDE``).
Blender's ``bl_pkg/cli/blender_ext.py`` (shipped in Blender and in the bpy wheel) then runs
``build`` and ``validate``.

    python scripts/build_extension.py [--output-dir dist] [--blender-ext PATH]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "inve_blender"
ENGINE = REPO / "core"
MANIFEST = REPO / "blender_manifest.toml"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache")
# What the add-on never needs from the engine: the demo's clip (242 KB; `inve demo` is a command-line
# feature, and the add-on trains on the user's own strips).
ENGINE_EXCLUDE = ("data/bbb_excerpt.mp4",)


def _engine_ignore(src: str, names: list[str]) -> set[str]:
    skip = set(IGNORE(src, names))
    rel = Path(src).relative_to(ENGINE).as_posix()
    for n in names:
        if (f"{rel}/{n}" if rel != "." else n) in ENGINE_EXCLUDE:
            skip.add(n)
    return skip


def find_blender_ext(explicit: str | None = None) -> Path:
    """Blender's extension CLI: --blender-ext, $BLENDER_EXT, the bpy module's copy, or .venv's."""
    candidates = [explicit, os.environ.get("BLENDER_EXT")]
    spec = importlib.util.find_spec("bpy")
    roots = []
    if spec is not None and spec.submodule_search_locations:
        roots += list(spec.submodule_search_locations)
    roots += glob.glob(str(REPO / ".venv" / "lib" / "python3*" / "site-packages" / "bpy"))
    for root in roots:
        candidates += sorted(glob.glob(os.path.join(root, "*", "scripts", "addons_core", "bl_pkg", "cli",
                                                    "blender_ext.py")))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise SystemExit("build_extension: Blender's blender_ext.py not found; install bpy (pip install bpy) "
                     "or pass --blender-ext /path/to/blender/<version>/scripts/addons_core/bl_pkg/cli/blender_ext.py")


def stage(dest: Path) -> Path:
    """Copy the add-on and the engine into ``dest/inve_blender`` (a clean folder)."""
    pkg = dest / "inve_blender"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ADDON, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "engine"))
    shutil.copy2(MANIFEST, pkg / "blender_manifest.toml")  # kept at the repository's top level
    shutil.copytree(ENGINE, pkg / "engine" / "core", ignore=_engine_ignore)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pkg / "engine" / "requirements.txt").write_text(
        "# The INVE engine's Python dependencies (from pyproject.toml), installed by the add-on's\n"
        "# 'Install Engine' button into the engine environment (inve_blender/io/engine_setup.py).\n" + "\n".join(deps) + "\n")
    return pkg


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise SystemExit(f"build_extension: {' '.join(cmd[1:3])} failed:\n{out}")
    return out


def build(output_dir: Path, blender_ext: Path, python: str = sys.executable) -> Path:
    # a private staging folder: several builds (parallel test runs) never share one
    staging = Path(tempfile.mkdtemp(prefix="inve_extension_stage_"))
    try:
        pkg = stage(staging / "stage")
        output_dir.mkdir(parents=True, exist_ok=True)
        manifest = tomllib.loads((pkg / "blender_manifest.toml").read_text())
        zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
        built = staging / zip_path.name
        run([python, str(blender_ext), "build", "--source-dir", str(pkg), "--output-filepath", str(built)])
        run([python, str(blender_ext), "validate", str(built)])
        shutil.move(str(built), str(zip_path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", default=str(REPO / "dist"), help="where the zip goes (default: dist/)")
    ap.add_argument("--blender-ext", default=None, help="path to Blender's bl_pkg/cli/blender_ext.py")
    args = ap.parse_args(argv)
    zip_path = build(Path(args.output_dir), find_blender_ext(args.blender_ext))
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
