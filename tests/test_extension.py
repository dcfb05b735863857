"""The extension zip as Blender's own tool builds and validates it: what it carries and what
its manifest promises (Blender's extension guidelines)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import build_extension  # noqa: E402


def _blender_ext() -> Path:
    try:
        return build_extension.find_blender_ext()
    except SystemExit as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ext = _blender_ext()
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_extension.py"), "--output-dir", str(out),
                           "--blender-ext", str(ext)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zip_path = Path(proc.stdout.strip().splitlines()[-1])
    assert zip_path.is_file() and zip_path.parent == out
    return zip_path, ext


def test_blender_validates_the_zip(built: tuple[Path, Path]) -> None:
    zip_path, ext = built
    proc = subprocess.run([sys.executable, str(ext), "validate", str(zip_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in (proc.stdout + proc.stderr).lower()


def test_zip_carries_only_what_the_addon_needs(built: tuple[Path, Path]) -> None:
    zip_path, _ = built
    names = zipfile.ZipFile(zip_path).namelist()
    files = [n for n in names if not n.endswith("/")]
    # the add-on and the engine it runs
    for required in ("blender_manifest.toml", "__init__.py", "engine/core/cli.py", "engine/core/__main__.py",
                     "engine/requirements.txt"):
        assert required in files, f"{required} missing"
    assert not [n for n in files if n.endswith(".mp4")], "the demo clip is for the command line only"
    assert not [n for n in files if "__pycache__" in n or n.endswith((".pyc", ".pyo", ".zip", ".whl"))]
    assert not [n for n in files if n.split("/")[0] in ("tests", "scripts", "docs", ".git", "build", "dist")]
    # nothing but Python, the manifest, the requirements and the engine's small data files
    odd = [n for n in files if not n.endswith((".py", ".toml", ".txt", ".md", ".png", ".json"))]
    assert not odd, f"unexpected files in the zip: {odd}"
    assert zip_path.stat().st_size < 400_000, f"zip is {zip_path.stat().st_size} bytes"


def test_manifest_follows_the_guidelines(built: tuple[Path, Path]) -> None:
    zip_path, _ = built
    with zipfile.ZipFile(zip_path) as z:
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
        reqs = [ln for ln in z.read("engine/requirements.txt").decode().splitlines() if ln and not ln.startswith("#")]
        names = z.namelist()
    assert manifest["type"] == "add-on" and manifest["blender_version_min"] == "4.2.0"
    perms = manifest["permissions"]
    assert set(perms) <= {"files", "network", "clipboard", "camera", "microphone"}
    for key, reason in perms.items():  # Blender: a short reason, capitalised, no trailing period
        assert isinstance(reason, str) and 0 < len(reason) <= 64 and not reason.endswith("."), (key, reason)
        assert reason[0].isupper(), (key, reason)
    assert "network" in perms and "files" in perms  # the engine installer downloads; projects are files
    # `platforms` only where platform wheels are bundled (none are: the engine gets its own environment)
    bundled_wheels = [n for n in names if n.endswith(".whl")]
    assert ("platforms" in manifest) == bool(bundled_wheels)
    assert "wheels" not in manifest or bundled_wheels
    # the engine's requirements are the project's pins, numpy 2 allowed (Blender 5.x bundles numpy 2)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert reqs == pyproject
    assert any(r.replace(" ", "").startswith("numpy") and "<3" in r for r in reqs)
