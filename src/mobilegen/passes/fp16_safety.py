"""fp16 safety: the model run with fp16 arithmetic in PyTorch, layer by layer.

CPU runtimes take an fp16 artifact and largely compute in fp32, so an activation past fp16's
largest finite value (65504) never shows on the host; on a phone's GPU or NPU it becomes inf, then
NaN, then a black image (SDXL's VAE is the known case). This module interprets the captured
program (torch.export) node by node: once in fp32, to record each layer's largest |activation|
and its headroom to 65504 (65504 / max), and once in fp16 arithmetic, with the ops every fp16
artifact keeps in fp32 (norms, softmax, reductions, the sinusoidal timestep path) kept in fp32 here
too, to find inf/NaN and measure the output against fp32.

Layers are named by their module path ("blocks.3.mlp.fc1"); ops a block runs itself (its residual
adds) are named by the block. `plan_fp16` keeps in fp32 every layer whose headroom is below the
asked factor, then re-runs fp16 and adds any layer that still makes inf/NaN (a kept layer's large
output overflows again where the next fp16 op reads it), until the run is finite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from mobilegen.passes.precision import PrecisionSpec, matches

FP16_MAX = 65504.0
# aten ops every fp16 artifact keeps in fp32 (targets/onnx_precision.FP16_KEEP_FP32_OPS, their
# ATen names), and ops that only check or convert (run as they are).
KEEP_FP32_ATEN = ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm",
                  "instance_norm", "softmax", "_softmax", "log_softmax", "mean", "sum", "var",
                  "pow", "sqrt", "rsqrt", "reciprocal", "exp", "erf", "sin", "cos", "arange")
PASS_THROUGH_ATEN = ("_assert_tensor_metadata", "sym_size", "_guards_fn")
# ops that move or reshape values without computing new ones: not measured again
SAME_VALUES_ATEN = ("view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "flatten",
                    "expand", "slice", "select", "chunk", "split", "clone", "contiguous",
                    "pixel_shuffle", "t", "cat", "to", "_to_copy", "alias")
MAX_FIX_ROUNDS = 20
MAX_FEEDS = 8  # the check interprets the graph op by op in fp16 (slow on CPU): 8 feeds over t


@dataclass
class LayerRange:
    layer: str
    max_abs: float  # largest |activation| in fp32 over the feeds
    headroom: float  # 65504 / max_abs (inf for an all-zero layer)
    nonfinite_fp16: bool = False  # inf/NaN in the fp16-arithmetic run (before any fix)


@dataclass
class Fp16Safety:
    layers: list[LayerRange]  # sorted, least headroom first
    kept_fp32: list[str]  # layers the plan keeps in fp32
    nonfinite_before: list[str]  # layers with inf/NaN in fp16 with nothing kept
    step_psnr_before_db: float  # fp16 arithmetic vs fp32, worst feed, nothing kept
    step_psnr_after_db: float  # the same with `kept_fp32` in fp32
    min_headroom_after: float  # least headroom among layers still in fp16
    feeds: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self, top: int = 12) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(r) for r in self.layers[:top]]
        d["layers_total"] = len(self.layers)
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in d.items()}


def _module_path(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _timestep_nodes(graph: Any) -> set[Any]:
    """The nodes that feed a sin/cos (the sinusoidal timestep features), walking backwards."""
    seen: set[Any] = set()
    stack = [n for n in graph.nodes if _aten_name(n) in ("sin", "cos")]
    while stack:
        n = stack.pop()
        if n in seen or n.op != "call_function":
            continue
        seen.add(n)
        stack.extend(a for a in n.all_input_nodes)
    return seen


def _aten_name(node: Any) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


def run_program(gm: Any, feeds: list[tuple[Any, ...]], half: bool,
                keep: tuple[str, ...] = ()) -> tuple[dict[str, float], dict[str, bool], list[Any]]:
    """Interpret `gm` on each feed: per layer the largest |activation| and whether any was
    non-finite, and the outputs. With `half`, every float op runs in fp16 except the fp32 set
    (KEEP_FP32_ATEN, the timestep path, layers matching `keep`)."""
    import torch
    from torch.utils._pytree import tree_map

    fixed32 = _timestep_nodes(gm.graph)
    peak: dict[str, float] = {}
    bad: dict[str, bool] = {}

    class Interp(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            if n.op != "call_function" or _aten_name(n) in PASS_THROUGH_ATEN:
                return None if _aten_name(n) == "_assert_tensor_metadata" else super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            path = _module_path(n)
            fp32 = (not half or n in fixed32 or _aten_name(n) in KEEP_FP32_ATEN
                    or matches(path, keep))
            dtype = torch.float32 if fp32 else torch.float16

            def cast(v: Any) -> Any:
                return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

            out = n.target(*tree_map(cast, args), **tree_map(cast, kwargs))
            if _aten_name(n) in SAME_VALUES_ATEN:
                return out
            for v in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
                    m = float(v.detach().abs().amax())  # NaN and inf propagate through amax
                    bad[path] = bad.get(path, False) or not np.isfinite(m)
                    peak[path] = max(peak.get(path, 0.0), m if not np.isnan(m) else np.inf)
            return out

    outs = []
    with torch.inference_mode():
        for feed in feeds:
            out = Interp(gm).run(*feed)
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).float().numpy())
    return peak, bad, outs


def _psnr(ref: list[Any], got: list[Any]) -> float:
    from mobilegen.measure.parity import compare

    return min(compare(r, g).psnr_db for r, g in zip(ref, got, strict=True))


def check_fp16(program: Any, feeds: list[dict[str, np.ndarray]], min_headroom: float = 2.0,
               keep: tuple[str, ...] = ()) -> Fp16Safety:
    """Measure, plan and verify: see the module docstring."""
    import torch

    gm = program.module()
    args = [tuple(torch.from_numpy(np.asarray(v)) for v in f.values()) for f in feeds]
    peak, _, ref = run_program(gm, args, half=False)
    _, bad0, out0 = run_program(gm, args, half=True, keep=keep)
    kept = sorted({*keep, *(p for p, m in peak.items() if m * min_headroom >= FP16_MAX)})
    order = list(dict.fromkeys(_module_path(n) for n in gm.graph.nodes if n.op == "call_function"))
    for _ in range(MAX_FIX_ROUNDS):
        _, bad, out = run_program(gm, args, half=True, keep=tuple(kept))
        still = [p for p in order if bad.get(p) and p not in kept]
        if not still:
            break
        kept.append(still[0])  # the first overflow in graph order; later ones may follow it
    layers = sorted((LayerRange(p, m, FP16_MAX / m if m else np.inf, bool(bad0.get(p)))
                     for p, m in peak.items()), key=lambda r: r.headroom)
    left = [r.headroom for r in layers if not matches(r.layer, tuple(kept))]
    notes = [f"fp16 still not finite after keeping {len(kept)} layers in fp32: {still[:3]}"
             ] if still else []
    return Fp16Safety(layers, kept, sorted(p for p, b in bad0.items() if b), _psnr(ref, out0),
                      _psnr(ref, out), min(left, default=np.inf), len(feeds), notes)


def safe_fp16_spec(program: Any, spec: PrecisionSpec,
                   feeds: list[dict[str, np.ndarray]]) -> tuple[PrecisionSpec, dict[str, Any]]:
    """The fp16 spec with the layers the safety check keeps in fp32 added to `keep_float`, and
    the check's summary for the artifact's details."""
    feeds = feeds[::max(1, len(feeds) // MAX_FEEDS)][:MAX_FEEDS]  # stratified over t already
    safety = check_fp16(program, feeds, spec.fp16_min_headroom, spec.keep_float)
    return replace(spec, keep_float=tuple(safety.kept_fp32)), safety.to_dict()
