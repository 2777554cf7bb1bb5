"""torch-sentinel: find the bugs that make PyTorch training silently wrong.

Importing :mod:`sentinel` is cheap: it imports neither torch nor LibCST. The runtime half
(:func:`sentinel.watch`, :mod:`sentinel.probes`) loads torch on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "watch"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `sentinel.watch` lives in the torch-importing half; resolve it lazily.
    if name == "watch":
        from sentinel.probes.watch import watch

        return watch
    raise AttributeError(f"module 'sentinel' has no attribute {name!r}")
