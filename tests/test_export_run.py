"""The stage loop's contracts: a capture failure is one typed line; a failed gate is a result
(the report is complete and says so), not an exception the caller must recover from."""

from __future__ import annotations

import pytest
import torch

from mobilegen.errors import ExportError
from mobilegen.export.gates import GateFailure, check
from mobilegen.export.run import capture


class Branchy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return x * 2
        return x


def test_a_capture_failure_is_one_line_naming_the_model():
    with pytest.raises(ExportError) as err:
        capture(Branchy(), (torch.ones(2, 3),))
    text = str(err.value)
    assert "\n" not in text and text.startswith("torch.export cannot capture Branchy:")


def test_one_gate_check_for_every_kind_of_gate():
    assert check("a.onnx", "min_psnr_db", None, 40.0, True) is None  # identical outputs: inf
    assert check("a.onnx", "min_psnr_db", 50.0, None, True) is None  # gate unset
    f = check("chain:onnx/fp32", "min_psnr_db", 12.5, 30.0, True)
    assert isinstance(f, GateFailure)
    assert str(f) == "chain:onnx/fp32: min_psnr_db 12.5 (needs >= 30, off by 17.5)"
    nan = check("pass relu_attention", "min_psnr_db", float("nan"), 30.0, True)
    assert nan is not None and str(nan).startswith("pass relu_attention: min_psnr_db nan")
    slow = check("a.onnx", "max_latency_ms", 9.0, 5.0, False)
    assert str(slow) == "a.onnx: max_latency_ms 9 (needs <= 5, off by 4)"
