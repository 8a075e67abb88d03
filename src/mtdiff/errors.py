"""The base of mtdiff's own errors."""

from __future__ import annotations

__all__ = ["MtdiffError", "InputError"]


class MtdiffError(Exception):
    """A user error: the CLI prints its message, no traceback.

    Every error mtdiff raises for something the user can fix (a config, the data, a run directory, a
    missing package or weights file) derives from it; most keep a second, built-in base
    (``ValueError``, ``RuntimeError``) so that ``except`` clauses written against that one still work.
    """


class InputError(MtdiffError, ValueError):
    """An argument or input of a call that cannot be used: a count below 1, a time index past the schedule,
    a device that is not there, images of the wrong size. The message says what was expected."""
