"""The root of every error walduck raises, and the two families a stage's loop decides by.

===================  ==================================================================================
:class:`WalduckError`  root: ``except WalduckError`` catches every error of ours and nothing else
:class:`Unprocessable` an input a stage refuses (a malformed record, an undecodable value, an invalid
                       change): it goes to the dead-letter topic with its ``reason`` and the stage goes on
:class:`InvariantBroken` a guarantee of the stage itself no longer holds (LSN or offset regression, an
                       unacknowledged delivery, a protocol out of order): the stage stops rather than
                       publish something wrong; its supervisor restarts it from the last commit
===================  ==================================================================================

Every other error (configuration, a refused request, a service that cannot start) derives from the root
directly. Errors keep the builtin base they had (``ValueError``, ``RuntimeError``) beside the root, so code
that caught those still does. Catch by type, never by class name.
"""

from __future__ import annotations


class WalduckError(Exception):
    """Root of walduck's errors."""


class Unprocessable(WalduckError):
    """An input a stage refuses; ``reason`` is short and bounded (a metric label and the DLQ's reason)."""

    reason: str = "unprocessable"


class InvariantBroken(WalduckError):
    """A guarantee of the stage itself broke: stop, do not publish or commit past it."""
