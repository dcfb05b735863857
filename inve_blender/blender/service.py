"""The session's engine service, seen from Blender: which interpreter runs it, its lifetime.

One ``inve serve`` process per Blender session (:data:`MANAGER`), started on first need with
the Engine Python from the preferences and the bundled engine on its PYTHONPATH, stopped when
the add-on is disabled or Blender exits (``atexit``). Requests go out through
:class:`~inve_blender.io.service.ServiceTask` (a job) or :func:`request` (the live preview);
nothing here waits for an answer.
"""
from __future__ import annotations

import atexit
from typing import Any, Callable, Mapping, Sequence

from ..io.service import ServiceManager, ServiceTask
from .preferences import engine_spec

MANAGER = ServiceManager()


def argv_env() -> tuple[list[str], dict[str, str]]:
    spec = engine_spec()
    return spec.command("serve"), spec.env()


def task(op: str, fields: Mapping[str, Any], title: str,
         on_frame: Callable[[dict[str, Any]], None] | None = None,
         pre: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> ServiceTask:
    """A job task sending one request (after ``pre``) to the service, when the job starts."""
    argv, env = argv_env()
    return ServiceTask(MANAGER, argv, env, op, fields, title=title, on_frame=on_frame, pre=pre)


def request(op: str, **fields: Any) -> Any:
    """Send one request now (starting the service if needed); returns the pending request."""
    argv, env = argv_env()
    return MANAGER.get(argv, env).request(op, **fields)


_restarts_seen: dict[str, int] = {}


def restarted_since(reader: str) -> bool:
    """Whether the service restarted since ``reader`` (a module keeping answers of the old
    process: the live preview, the slide read-out) last asked; the first call counts none."""
    c = MANAGER.client
    n = int(getattr(c, "restarts", 0)) if c is not None else 0
    changed = n != _restarts_seen.get(reader, 0)
    _restarts_seen[reader] = n
    return changed


def stop() -> None:
    MANAGER.stop()


atexit.register(stop)
