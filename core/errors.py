"""User-facing errors.

Anything a user can cause (a missing file, bad JSON, a bad frame range) raises
:class:`InveError`; the CLI prints its message as one line and exits non-zero. Any other
exception is a bug and keeps its traceback.
"""


class InveError(Exception):
    """An error caused by input or environment, reported to the user as one line."""


class Cancelled(InveError):
    """The user asked to stop (Ctrl-C, SIGTERM, or Cancel in Blender)."""

    def __init__(self, message: str = "cancelled by the user") -> None:
        super().__init__(message)
