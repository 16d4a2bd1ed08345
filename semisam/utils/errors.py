"""User-facing errors.

A :class:`SemisamError` carries one line that says what is wrong and what to do. Entry points print it as
``error: <message>`` and exit with status 2, without a traceback. Internal invariants use ``assert``.
"""
from __future__ import annotations


class SemisamError(Exception):
    """Bad input or environment, explained in one line for the user."""

    exit_code = 2

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # one line, always
        super().__init__(message)
