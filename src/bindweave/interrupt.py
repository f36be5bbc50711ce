"""Ctrl-C in a job: one line saying what was saved and how to continue, instead of a traceback.

A job marks itself with :func:`interrupt_message`; the CLI (:func:`bindweave.cli.main`) prints the line
of any ``KeyboardInterrupt`` and exits with 130, the shell's code for a process ended by SIGINT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

C = TypeVar("C")
R = TypeVar("R")

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT


class Interrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` whose message says what the job had saved and how to continue it."""


def interrupt_message(message: Callable[[C], str]) -> Callable[[Callable[[C], R]], Callable[[C], R]]:
    """Decorate a job ``run(config)``: Ctrl-C inside it becomes :class:`Interrupted` with ``message(config)``.

    ``message`` runs at the moment of the interrupt, so it can count what is on disk by then.
    """

    def decorate(job: Callable[[C], R]) -> Callable[[C], R]:
        @functools.wraps(job)
        def run(config: C) -> R:
            try:
                return job(config)
            except Interrupted:  # a nested job already said it
                raise
            except KeyboardInterrupt:
                raise Interrupted(message(config)) from None

        return run

    return decorate


def interrupt_line(command: str, err: KeyboardInterrupt) -> str:
    """The one line the CLI prints for ``err``: ``bindweave <command>: interrupted[; what to do]``."""
    detail = str(err) if isinstance(err, Interrupted) else ""
    return f"bindweave {command}: interrupted" + (f"; {detail}" if detail else "")
