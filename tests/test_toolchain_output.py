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
