"""The one base of every error imprag raises on bad input or state.

Each error also keeps the builtin it refines (`ValueError` for bad values, `RuntimeError` for a state that
cannot go on, `FileExistsError` for an output that is not ours), so code that catches those still works.
Catching `ImpragError` catches every expected failure and nothing else: the CLI prints such an error as
one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ImpragError"]


class ImpragError(Exception):
    """Bad input or state that imprag detected and explained; the message says what to change."""
