"""Install Engine (the add-on's own engine environment) and the background engine check: thin glue.

The work is :mod:`..io.engine_setup` (plain Python, tested without Blender): a venv in a per-user
folder shared by every Blender version, PyTorch for this machine, progress, cancel, a log. Here:
the operators (Install Engine, Cancel, Open Log), a timer that redraws while the installer's
thread runs, and the start-up re-check of the engine that runs in a thread so the panel never
waits for it (it only reads :func:`engine_env.cached_status` and :func:`checking`).

Nothing is downloaded unless Blender's *Allow Online Access* is on (``bpy.app.online_access``);
with a wheels folder set in the preferences the install is offline. Under background Blender
(and the bpy module), where timers never fire, the install runs to its end inside ``execute``.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Callable

import bpy
from bpy.props import StringProperty

from ..io import engine_env, engine_setup
from .ops_base import report_outcome

POLL_SECONDS = 0.3
_installer: engine_setup.EngineInstaller | None = None
_last: engine_setup.Progress | None = None
_check_thread: threading.Thread | None = None
# preferences.engine_spec, handed over by register(): this module must not import the preferences
# (they draw with it), so the add-on's package wires the two together
_spec_fn: Callable[[], engine_env.EngineSpec] | None = None
ADDON_ID = __package__.rpartition(".")[0]


def engine_home() -> Path:
    return engine_setup.default_home()


def installed_python() -> str | None:
    """The engine environment's Python when one is installed (file checks only: cheap)."""
    st = engine_setup.env_state(engine_home())
    return str(st.python) if st.status in ("ready", "outdated") else None


def installing() -> bool:
    return _installer is not None and _installer.running()


def progress() -> engine_setup.Progress | None:
    """The running install's progress, else the last one's end (for the panel)."""
    if _installer is not None:
        return _installer.snapshot()
    return _last


def checking() -> bool:
    return _check_thread is not None and _check_thread.is_alive()


# -- background check -----------------------------------------------------------------------

def check_in_background(spec: engine_env.EngineSpec) -> None:
    """Run the (seconds-long) engine check in a thread; the panel shows 'Checking' meanwhile."""
    global _check_thread
    if checking():
        return

    def work() -> None:
        engine_env.set_status(engine_env.check(spec))

    _check_thread = threading.Thread(target=work, name="inve-engine-check", daemon=True)
    _check_thread.start()


def _startup_check() -> float | None:
    """Timer callback after registration (interactive Blender only): start the check once, then
    redraw until it is done so the panel shows the answer without being hovered."""
    global _startup_started
    if not _startup_started:
        _startup_started = True
        try:
            if engine_env.cached_status() is None and _spec_fn is not None:
                check_in_background(_spec_fn())
        except Exception:  # noqa: BLE001 - a start-up check must never break Blender's start
            return None
    _redraw()
    return POLL_SECONDS if checking() else None


_startup_started = False


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("SEQUENCE_EDITOR", "PREFERENCES"):
                area.tag_redraw()


def _tick() -> float | None:
    _redraw()
    if installing() or checking():
        return POLL_SECONDS
    if _installer is not None:
        _finish()  # starts the engine check: keep redrawing until it is done
        return POLL_SECONDS if checking() else None
    return None


def _finish() -> None:
    """The install ended: keep its result for the panel and re-check the engine."""
    global _installer, _last
    if _installer is None:
        return
    _last = _installer.snapshot()
    _installer = None
    engine_env.set_status(None)
    if _last.ok and _spec_fn is not None:
        if bpy.app.background:
            engine_env.set_status(engine_env.check(_spec_fn()))
        else:
            check_in_background(_spec_fn())


# -- operators ------------------------------------------------------------------------------

class INVE_OT_install_engine(bpy.types.Operator):
    """Create the engine's own Python environment (shared by all Blender versions) and install
    PyTorch for this machine and the engine's other packages into it"""

    bl_idname = "inve.install_engine"
    bl_label = "Install Engine"
    bl_options = {"REGISTER"}

    wheels_dir: StringProperty(name="Wheels Folder", subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
                               description="Install offline from this folder of wheels (empty: the preference)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if installing():
            cls.poll_message_set("The engine is being installed")
            return False
        return True

    def _wheels(self, context: bpy.types.Context) -> str:
        addon = context.preferences.addons.get(ADDON_ID)
        p = addon.preferences if addon is not None else None
        folder = self.wheels_dir or (getattr(p, "wheels_dir", "") if p is not None else "")
        return bpy.path.abspath(folder) if folder else ""

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self._wheels(context):
            msg = f"Install the engine from {self._wheels(context)} into {engine_home()}?"
        else:
            if not bpy.app.online_access:
                self.report({"ERROR"}, engine_setup.ONLINE_OFF)
                return {"CANCELLED"}
            plan = engine_setup.plan_install(engine_setup.detect_machine())
            if not plan.supported:
                self.report({"ERROR"}, plan.description)
                return {"CANCELLED"}
            msg = f"Download {plan.description} and the engine's other packages into {engine_home()}?"
        return context.window_manager.invoke_confirm(self, event, message=msg)

    def execute(self, context: bpy.types.Context) -> set[str]:
        global _installer
        try:
            reqs = engine_env.requirements()
        except FileNotFoundError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wheels = self._wheels(context)
        if not wheels and not bpy.app.online_access:  # the rule holds for scripted calls too
            self.report({"ERROR"}, engine_setup.ONLINE_OFF)
            return {"CANCELLED"}
        _installer = engine_setup.EngineInstaller(engine_home(), reqs, wheels_dir=Path(wheels) if wheels else None,
                                                  allow_online=bool(bpy.app.online_access),
                                                  blender_python=sys.executable)
        if bpy.app.background:
            result = _installer.run()
            _finish()
            return report_outcome(self, result.ok, result.cancelled, result.message)
        _installer.start()
        bpy.app.timers.register(_tick, first_interval=POLL_SECONDS, persistent=True)
        self.report({"INFO"}, f"Installing the engine into {engine_home()} (log: {_installer.log_path})")
        return {"FINISHED"}


class INVE_OT_cancel_engine_install(bpy.types.Operator):
    """Stop the engine install; Install Engine later picks up where it stopped"""

    bl_idname = "inve.cancel_engine_install"
    bl_label = "Cancel Install"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not installing():
            cls.poll_message_set("No install is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        if _installer is not None:
            _installer.cancel()
        return {"FINISHED"}


class INVE_OT_open_engine_log(bpy.types.Operator):
    """Open the engine install log (every command and all of pip's output)"""

    bl_idname = "inve.open_engine_log"
    bl_label = "Open Install Log"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not engine_setup.log_path(engine_home()).is_file():
            cls.poll_message_set("Nothing was installed yet")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        bpy.ops.wm.path_open(filepath=str(engine_setup.log_path(engine_home())))
        return {"FINISHED"}


def draw_install(layout: bpy.types.UILayout) -> None:
    """Install Engine with its progress, cancel and log (panel and preferences)."""
    p = progress()
    if installing() and p is not None:
        layout.progress(factor=p.fraction, type="BAR", text=p.text()[:80] or "Installing the engine")
        row = layout.row(align=True)
        row.operator("inve.cancel_engine_install", icon="CANCEL")
        row.operator("inve.open_engine_log", text="", icon="TEXT")
        return
    row = layout.row(align=True)
    row.operator("inve.install_engine", icon="IMPORT")
    row.operator("inve.open_engine_log", text="", icon="TEXT")
    if p is not None and p.finished and not p.ok:
        layout.label(text=(p.error or p.message)[:120], icon="CANCEL" if p.cancelled else "ERROR")


def register(spec_fn: Callable[[], engine_env.EngineSpec]) -> None:
    global _spec_fn
    _spec_fn = spec_fn
    if not bpy.app.background:
        # persistent: Blender loads the start-up file after enabling add-ons, which drops other timers
        bpy.app.timers.register(_startup_check, first_interval=1.0, persistent=True)


def unregister() -> None:
    for fn in (_startup_check, _tick):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    if _installer is not None:
        _installer.cancel()


CLASSES = (INVE_OT_install_engine, INVE_OT_cancel_engine_install, INVE_OT_open_engine_log)
