"""What every spawned worker process (batch exports, one target per child) sets up first."""

from __future__ import annotations

import signal
from typing import Any


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def init_worker() -> None:
    # a spawned worker starts with default handlers: make SIGTERM unwind like Ctrl-C, so the
    # staging folder is cleaned up
    signal.signal(signal.SIGTERM, _raise_interrupt)
