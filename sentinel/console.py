"""Rich consoles that behave like the ecosystem expects.

Colour follows ``--color`` first, then ``NO_COLOR`` / ``FORCE_COLOR`` and TTY detection (rich's own
rules). Machine formats never go through rich markup.
"""

from __future__ import annotations

import os
from typing import TextIO

from rich.console import Console


def make_console(color: str = "auto", *, stderr: bool = False, file: TextIO | None = None) -> Console:
    """Return a console for human output.

    ``color`` is ``auto`` (rich decides from the stream, ``NO_COLOR`` and ``FORCE_COLOR``),
    ``always`` or ``never``.
    """
    kwargs: dict = {"stderr": stderr, "highlight": False, "soft_wrap": True}
    if file is not None:
        kwargs["file"] = file
    if color == "always":
        kwargs["force_terminal"] = True
        kwargs["no_color"] = False
    elif color == "never" or os.environ.get("NO_COLOR"):
        # plain text: no colour and no bold/underline either (NO_COLOR beats FORCE_COLOR)
        kwargs["no_color"] = True
        kwargs["force_terminal"] = False
    return Console(**kwargs)
