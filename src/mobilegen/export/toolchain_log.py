"""Keep what converters print out of the user's terminal.

litert-torch, TensorFlow's native code and coremltools write progress bars, banners and warnings
straight to file descriptors 1 and 2, from Python and from C++. On stdout that would corrupt
`--json`; on stderr it buries our own progress and the summary. While a target exports or loads,
both descriptors point at the output folder's `logs/toolchain.log`; when the step fails, the log's
last lines are replayed on stderr so the cause is not hidden.

MOBILEGEN_TOOLCHAIN_OUTPUT=show turns this off (everything goes to the terminal as it happens).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPLAY_LINES = 20


def _stream_handlers() -> list[Any]:
    """The stream handlers that write somewhere now. One without a stream is skipped: it opens
    its own file on its first record (torch's structured-trace LazyTraceHandler). Given the log
    instead, that one takes the stream for an inherited one (its pid unset) and closes it, which
    left sys.stdout closed under every later write (torch.fx's isatty check in a child lowering
    one target, export/isolated.py)."""
    import logging

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and h.stream is not None]


@contextlib.contextmanager
def _log_handlers_to(stream: Any) -> Iterator[None]:
    """Third-party `logging` handlers (torch's, which logs the `_pytree` register_constant
    deprecation when torchao is imported) hold the stream they were made with: under the live
    display that is Rich's terminal proxy, not file descriptor 2. Each points at the log
    meanwhile; one made meanwhile (holding the log) gets the terminal's stderr back after."""
    outer = sys.stderr  # entered before stderr is redirected
    swapped = [(h, h.stream) for h in _stream_handlers()]
    for h, _ in swapped:
        h.stream = stream  # not setStream: it flushes the old stream, which may be closed
    try:
        yield
    finally:
        for h, old in swapped:
            h.stream = old
        for h in _stream_handlers():
            if h.stream is stream:
                h.stream = outer


@contextlib.contextmanager
def toolchain_output(log: Path) -> Iterator[None]:
    if os.environ.get("MOBILEGEN_TOOLCHAIN_OUTPUT") == "show":
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failed = False
    with open(log, "a", encoding="utf-8", errors="replace") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            # Python-level writers too (they may hold replaced sys.stdout objects, e.g. in tests)
            with _log_handlers_to(f), contextlib.redirect_stdout(f), \
                    contextlib.redirect_stderr(f):
                yield
        except Exception:
            failed = True
            raise
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()
                if tail[-REPLAY_LINES:]:
                    sys.stderr.write(f"last lines of {log.name}:\n"
                                     + "\n".join(tail[-REPLAY_LINES:]) + "\n")
