"""Install Engine in real Blender: the installed extension's operator builds the engine
environment from a local folder of tiny wheels (no network), refuses to download while *Allow
Online Access* is off, and the add-on then runs the engine with that environment's Python.

Like test_blender_addon.py, Blender runs in a child process (``python THIS_FILE ARGS.json``)
with a scratch ``BLENDER_USER_RESOURCES`` and a scratch engine folder (``INVE_ENGINE_HOME``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ADDON_MODULE = "bl_ext.user_default.inve_blender"

try:  # the parent needs pytest; the child does not
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

HAVE_BPY = __import__("importlib").util.find_spec("bpy") is not None
REQS = ["inve-fake-torch==2.13.0", "inve_fake_numpy>=1.26,<3"]

if pytest is not None and __name__ != "__main__":
    pytestmark = [pytest.mark.blender,
                  pytest.mark.skipif(not HAVE_BPY, reason="needs the bpy module (pip install bpy)")]


def test_install_engine_operator_offline_and_online_refusal(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    sys.path.insert(0, str(REPO / "tests"))
    import build_extension
    from test_engine_setup import make_wheel

    zip_path = build_extension.build(tmp_path / "dist", build_extension.find_blender_ext())
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "inve-fake-torch", "2.13.0")
    make_wheel(wheels, "inve-fake-numpy", "2.2.6")
    home = tmp_path / "engine_home"
    args = {"zip": str(zip_path), "wheels": str(wheels), "home": str(home), "result": str(tmp_path / "r.json")}
    (tmp_path / "args.json").write_text(json.dumps(args))
    user = tmp_path / "blender_user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(BLENDER_USER_RESOURCES=str(user), INVE_ENGINE_HOME=str(home), PIP_CONFIG_FILE=os.devnull)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path / "args.json")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads((tmp_path / "r.json").read_text())
    # online access off and no wheels folder: one clear refusal, nothing created
    assert "Allow Online Access" in r["offline_refusal"], r["offline_refusal"]
    assert not r["venv_after_refusal"]
    # from the wheels folder: installed, and the engine now runs with the environment's Python
    assert r["progress_ok"], r["progress_message"]
    assert r["state"] == "ready"
    assert r["spec"][0] == "engine environment" and r["spec"][1] == r["venv_python"]
    assert Path(r["venv_python"]).is_relative_to(home)
    assert r["fake_numpy"] == "2.2.6"
    assert r["log_poll"] == "" and "Successfully installed" in (home / "install.log").read_text()
    assert r["draw_ok"]
    ok, message, origin = r["startup_status"]
    assert not ok and message.startswith("The engine needs torch") and origin == "engine environment", message
    assert r["unregistered"]


# =======================================================================================
# child side (runs inside Blender's Python)
def child(args: dict[str, Any]) -> dict[str, Any]:
    import bpy
    from importlib import import_module

    bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default", enable_on_install=True)
    engine_env = import_module(ADDON_MODULE + ".io.engine_env")
    preferences = import_module(ADDON_MODULE + ".blender.preferences")
    ops_engine = import_module(ADDON_MODULE + ".blender.ops_engine")
    engine_env.requirements = lambda root=None: list(REQS)  # the real ones are gigabytes of PyTorch
    out: dict[str, Any] = {}
    bpy.context.preferences.system.use_online_access = False
    try:
        bpy.ops.inve.install_engine()
        out["offline_refusal"] = ""
    except RuntimeError as exc:
        out["offline_refusal"] = str(exc)
    out["venv_after_refusal"] = os.path.exists(os.path.join(args["home"], "venv"))
    try:
        bpy.ops.inve.open_engine_log()
    except RuntimeError:
        pass
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.wheels_dir = args["wheels"]
    bpy.ops.inve.install_engine()  # background Blender: runs to its end here
    p = ops_engine.progress()
    out["progress_ok"], out["progress_message"] = bool(p and p.ok), (p.message if p else "no progress")
    engine_setup = import_module(ADDON_MODULE + ".io.engine_setup")
    out["state"] = engine_setup.env_state(Path(args["home"]), REQS).status
    spec = preferences.engine_spec()
    out["spec"] = [spec.origin, spec.python]
    out["venv_python"] = str(engine_setup.venv_python(Path(args["home"])))
    proc = subprocess.run([spec.python, "-c", "import inve_fake_numpy_mod as m; print(m.VERSION)"],
                          capture_output=True, text=True, timeout=60)
    out["fake_numpy"] = proc.stdout.strip()
    out["log_poll"] = "" if bpy.ops.inve.open_engine_log.poll() else "no log"
    # the start-up check (a timer in interactive Blender; called here): runs in a thread, the
    # panel reads the result when it lands; this environment has no real torch, so it says so
    engine_env.set_status(None)
    ops_engine._startup_started = False
    ops_engine._startup_check()
    ops_engine._check_thread.join(120)
    st = engine_env.cached_status()
    out["startup_status"] = [st.ok, st.message, st.spec.origin] if st else None
    # the panel part draws (into a stub layout that accepts any call)

    class Any_:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: self

    ops_engine.draw_install(Any_())
    out["draw_ok"] = True
    bpy.ops.preferences.addon_disable(module=ADDON_MODULE)  # 4.5 hangs at exit with registered classes
    out["unregistered"] = not hasattr(bpy.types, "INVE_OT_install_engine")
    return out


if __name__ == "__main__":
    a = json.loads(Path(sys.argv[1]).read_text())
    try:
        res = child(a)
    except Exception:  # noqa: BLE001 - report to the parent
        traceback.print_exc()
        try:
            import bpy

            bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
        except Exception:  # noqa: BLE001
            pass
        sys.exit(1)
    Path(a["result"]).write_text(json.dumps(res))
    sys.exit(0)
