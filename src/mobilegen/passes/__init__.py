"""Mobile passes, registered by stable name. A recipe's `passes` list names them in order.

Two kinds:
- "module" passes rewrite the PyTorch model before capture (gelu_to_silu, relu_attention); each
  returns the new model and a PassReport (see passes/base.py).
- "precision" passes (fp16, int8) act per target on the exported artifact through the target's own
  toolkit (see passes/precision.py for the contract a target module implements).

Each pass file defines a frozen pydantic `Options` model (the keys a recipe table may set) and
imports torch/onnx only inside functions, so loading a recipe stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

PassKind = Literal["module", "precision"]


@dataclass(frozen=True)
class PassEntry:
    name: str
    kind: PassKind
    module: str  # the pass's own file; defines Options and run() or precision_spec()

    def load(self) -> Any:
        return importlib.import_module(self.module)

    def options(self, raw: dict[str, Any]) -> Any:
        """Typed options; raises pydantic.ValidationError on an unknown key or bad value."""
        return self.load().Options.model_validate(raw)


PASSES: dict[str, PassEntry] = {
    e.name: e
    for e in (
        PassEntry("gelu_to_silu", "module", "mobilegen.passes.gelu_to_silu"),
        PassEntry("relu_attention", "module", "mobilegen.passes.relu_attention"),
        PassEntry("fp16", "precision", "mobilegen.passes.fp16"),
        PassEntry("int8", "precision", "mobilegen.passes.int8"),
        PassEntry("palettize", "precision", "mobilegen.passes.palettize"),
    )
}
