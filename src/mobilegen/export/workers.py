"""What every spawned worker process (batch exports, one target per child) sets up first."""

from __future__ import annotations

import signal
import warnings
from typing import Any


def silence_known_noise() -> None:
    """torch.export's own deprecation noise (not actionable by users) would bury the summary."""
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*", category=FutureWarning)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def init_worker() -> None:
    silence_known_noise()  # a spawned worker starts with default warning filters too
    # a spawned worker starts with default handlers: make SIGTERM unwind like Ctrl-C, so the
    # staging folder is cleaned up
    signal.signal(signal.SIGTERM, _raise_interrupt)
