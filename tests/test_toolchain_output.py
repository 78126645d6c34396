"""Converter chatter (Python and native writes to fd 1/2) goes to the log, not the terminal;
a failing step replays the log's tail on stderr."""

from __future__ import annotations

import os
import sys

import pytest

from mobilegen.export.toolchain_log import toolchain_output


def test_native_and_python_output_go_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / "toolchain.log"
    with toolchain_output(log):
        os.write(1, b"native stdout banner\n")
        os.write(2, b"native stderr progress\n")
        print("python print")
        print("python warning", file=sys.stderr)
    print("after")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""
    text = log.read_text()
    for line in ("native stdout banner", "native stderr progress", "python print",
                 "python warning"):
        assert line in text


def test_a_failure_replays_the_tail_and_reraises(tmp_path, capfd):
    log = tmp_path / "toolchain.log"
    with pytest.raises(RuntimeError, match="converter broke"), toolchain_output(log):
        os.write(2, b"".join(f"line {i}\n".encode() for i in range(30)))
        raise RuntimeError("converter broke")
    _, err = capfd.readouterr()
    assert "last lines of toolchain.log" in err and "line 29" in err and "line 5\n" not in err


def test_show_turns_capture_off(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("MOBILEGEN_TOOLCHAIN_OUTPUT", "show")
    log = tmp_path / "toolchain.log"
    with toolchain_output(log):
        os.write(2, b"visible\n")
    assert "visible" in capfd.readouterr().err and not log.exists()


def test_third_party_log_handlers_write_to_the_log(tmp_path):
    """A library's logging handler made before the export (torch's, holding the terminal or
    the live display's proxy) logs into toolchain.log while a target works (issue 26: torch's
    `_pytree` register_constant deprecation leaked onto the terminal), and one made meanwhile
    is given back a live stream afterwards."""
    import io
    import logging

    terminal = io.StringIO()
    logger = logging.getLogger("torch.fake_pytree")
    handler = logging.StreamHandler(terminal)
    logger.addHandler(handler)
    logger.propagate = False
    late = logging.getLogger("torchao.fake")
    log = tmp_path / "toolchain.log"
    try:
        with toolchain_output(log):
            logger.warning("register_constant() on Enum subclasses is deprecated")
            late_handler = logging.StreamHandler(sys.stderr)  # sys.stderr is the log here
            late.addHandler(late_handler)
        assert "register_constant" in log.read_text() and terminal.getvalue() == ""
        assert handler.stream is terminal and late_handler.stream is sys.stderr
        logger.warning("after")
        assert terminal.getvalue() == "after\n"
    finally:
        logger.removeHandler(handler)
        late.handlers.clear()


def test_a_handler_without_a_stream_is_left_alone(tmp_path):
    """torch's structured-trace handler has no stream until its first record; given the log,
    it closed it as a stream inherited from another process, so every later write to
    sys.stdout failed ('I/O operation on closed file' in a child lowering one target)."""
    import logging

    from torch._logging._internal import LazyTraceHandler

    lazy = LazyTraceHandler(None)
    logger = logging.getLogger("torch.fake_trace")
    logger.addHandler(lazy)
    logger.propagate = False
    log = tmp_path / "toolchain.log"
    try:
        with toolchain_output(log):
            logger.warning("first trace record")  # opens its own file or disables itself
            print("still writable")
            assert not sys.stdout.closed and lazy.stream is not sys.stdout
        assert "still writable" in log.read_text()
    finally:
        logger.removeHandler(lazy)
