"""ExecuTorch lowering (targets/executorch.py's side that touches `executorch.exir`): the shared
capture made ready for a delegate, the profile's partitioner, `to_edge_transform_and_lower`, and
the delegation coverage read from ExecuTorch's own delegation info.

What the capture goes through before partitioning, and why (each measured on the default STOIC
with XnnpackPartitioner, executorch 1.5.1):
- Re-captured at fixed shapes (the example's batch). XNNPACK cannot lower a reshape whose size is
  symbolic ("Symbolic reshape is not supported"): with the dynamic batch, 54 view_copy nodes fell
  to the portable kernels and cut the graph into 50 delegate calls.
- Decompositions in the delegates' own ops: scaled_dot_product_attention as softmax(q k^T s) v
  (ATen's "safe softmax" decomposition adds eq/any/where/full_like nodes no delegate takes);
  layer_norm and group_norm with their means taken as 4-D means over the two innermost axes
  (XNNPACK's mean is a global average pool: 4-D input, dims (2, 3) only); split_with_sizes and
  select as slices (XNNPACK has slice, not split or select); nearest upsampling by integer
  factors as concatenations (no nearest resize). On the digits-t2i UNet the native group norms
  alone had left 21 nodes and 23 delegate calls on the portable kernels.
- Dim order: ATen's pixel_shuffle leaves a channels_last clone (`_clone_dim_order` with dim_order
  0,2,3,1). The portable kernel refuses it at run time ("Check failed (out_dim_order[i] ==
  dim_order_ref[i])") and the .pte did not run. Every non-contiguous clone/dim-order copy is
  rewritten to the contiguous order: the values are the same, and the graph's output is
  contiguous as the runtime's caller expects.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from mobilegen.errors import ExportError, first_line
from mobilegen.targets.coverage import entry, verdict_of

TOOL = "executorch.devtools.backend_debug.get_delegation_info"
# graph bookkeeping, not compute: never counted as a node a backend must take
NOT_COMPUTE = ("getitem", "sym_size", "sym_numel", "sym_stride", "_assert", "mul", "add",
               "floordiv", "sub")
ACCELERATOR = {"xnnpack": "executorch-xnnpack", "coreml": "executorch-coreml",
               "qnn": "executorch-qnn-htp", "vulkan": "executorch-vulkan"}


# ---------------------------------------------------------------- decompositions


def _mean_last(x: Any, dims: int) -> Any:
    """The mean over the last `dims` axes of x as a 4-D mean over axes (2, 3), keepdim."""
    lead = x.shape[: x.dim() - dims]
    n = math.prod(x.shape[x.dim() - dims:])
    m = x.reshape(math.prod(lead) if lead else 1, 1, n, 1).mean(dim=(2, 3), keepdim=True)
    return m.reshape(*lead, *([1] * dims))


def layer_norm(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None,
               eps: float = 1e-5, *args: Any) -> Any:
    import torch

    dims = len(normalized_shape)
    centered = input - _mean_last(input, dims)
    out = centered * torch.rsqrt(_mean_last(centered * centered, dims) + eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def group_norm(input: Any, weight: Any, bias: Any, n: Any, c: Any, hw: Any, group: int,
               eps: float) -> Any:
    """aten.native_group_norm's decomposition (returns out, mean, rstd as ATen does)."""
    import torch

    b = input.shape[0]
    grouped = input.reshape(b, group, -1)
    mean = _mean_last(grouped, 1)
    centered = grouped - mean
    rstd = torch.rsqrt(_mean_last(centered * centered, 1) + eps)
    out = (centered * rstd).reshape(input.shape)
    affine = (1, input.shape[1]) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(affine)
    if bias is not None:
        out = out + bias.reshape(affine)
    return out, mean.reshape(b, group), rstd.reshape(b, group)


def group_norm_full(input: Any, num_groups: int, weight: Any = None, bias: Any = None,
                    eps: float = 1e-5, cudnn_enabled: bool = True) -> Any:
    """aten.group_norm (the form the capture holds) in the same 4-D means."""
    b, c = input.shape[0], input.shape[1]
    return group_norm(input, weight, bias, b, c, 0, num_groups, eps)[0]


def upsample_nearest(input: Any, output_size: Any = None, scale_factors: Any = None) -> Any:
    """Nearest-neighbour upsampling by integer factors as concatenations of the input (XNNPACK
    has no nearest resize; it takes cat and reshape)."""
    import torch

    b, c, h, w = input.shape
    oh, ow = (output_size if output_size is not None
              else (int(h * scale_factors[0]), int(w * scale_factors[1])))
    if oh % h or ow % w:
        return torch.ops.aten.upsample_nearest2d.default(input, [oh, ow])
    fh, fw = oh // h, ow // w
    # one view per copy: XNNPACK's concat counts distinct input nodes (2 to 5)
    x = torch.cat([input.unsqueeze(-1) for _ in range(fw)], dim=-1).reshape(b, c, h, ow)
    return torch.cat([x.unsqueeze(3) for _ in range(fh)], dim=3).reshape(b, c, oh, ow)


def sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
         is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Any:
    """Attention as matmul, softmax, matmul (inference: no dropout)."""
    import torch

    s = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-2, -1)) * s
    if is_causal:
        lq, lk = query.shape[-2], key.shape[-2]
        causal = torch.ones(lq, lk, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask)
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def split_with_sizes(input: Any, split_sizes: Any, dim: int = 0) -> Any:
    out, start = [], 0
    for size in split_sizes:
        out.append(input.narrow(dim, start, size))
        start += size
    return out


def select(input: Any, dim: int, index: int) -> Any:
    """x.select(dim, i) as a slice and a reshape (XNNPACK has slice and reshape, not select)."""
    dim = dim % input.dim()
    shape = [d for k, d in enumerate(input.shape) if k != dim]
    return input.narrow(dim, index % input.shape[dim], 1).reshape(shape)


def decompositions() -> dict[Any, Any]:
    import torch

    aten = torch.ops.aten
    return {aten.scaled_dot_product_attention.default: sdpa,
            aten.layer_norm.default: layer_norm,
            aten.native_group_norm.default: group_norm,
            aten.group_norm.default: group_norm_full,
            aten.upsample_nearest2d.vec: upsample_nearest,
            aten.select.int: select,
            # in the input's dtype: core ATen's SiLU decomposition computes fp16 in fp32, casts
            # XNNPACK never takes (4 per SiLU'd tensor in the fp16 STOIC)
            aten.silu.default: lambda x: x * torch.sigmoid(x),
            aten.split_with_sizes.default: split_with_sizes,
            aten.split.Tensor: lambda x, size, dim=0: split_with_sizes(
                x, [min(size, x.shape[dim] - i) for i in range(0, x.shape[dim], size)], dim)}


BATCH1 = "forward_batch1"  # the batch-1 method beside "forward" (see fixed_programs)


def fixed_programs(module: Any, example: tuple[Any, ...], batch_axis: bool,
                   coded: tuple[int, ...] = ()) -> dict[str, Any]:
    """Method name -> the capture at fixed shapes: "forward" at the example's batch and, where
    that batch is above 1 and every input leads with the batch axis, "forward_batch1" at batch 1.
    A caller with one sample (no guidance, or guidance as two calls) then runs batch 1, not the
    example's batch padded (5.5x the batch-1 time on the default STOIC, measured). The inputs
    at `coded` go in as float32 unless the example already holds them as floats
    (float_code_inputs)."""
    batch = int(example[0].shape[0])
    sizes = {"forward": batch} | ({BATCH1: 1} if batch > 1 and batch_axis else {})
    example = tuple(a.float() if i in coded and not a.is_floating_point() else a
                    for i, a in enumerate(example))
    return {name: prepared(module, tuple(a[:b] for a in example)) for name, b in sizes.items()}


def _table() -> Any:
    """Core ATen's decompositions with `aten.linear` kept whole (the partitioner matches a
    quantized linear as dequantize -> linear -> quantize) and the delegate forms above."""
    import torch

    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.linear.default)
    table.update(decompositions())
    return table


def prepared(program: Any, example: tuple[Any, ...]) -> Any:
    """The capture (an ExportedProgram, or a module made from one) at the example's fixed
    shapes with the decompositions above."""
    import torch

    module = program if isinstance(program, torch.nn.Module) else program.module()
    try:
        from executorch.exir.operator.util import _QUANT_PRIMITIVES
        from executorch.exir.passes.constant_prop_pass import constant_prop_pass

        fixed = torch.export.export(module, tuple(example))
        fixed = fixed.run_decompositions(_table())
        _scalar_operands(fixed.graph_module)
        # the sinusoid's frequencies (arange, exp) become a constant no delegate has to take;
        # quantize / dequantize stay (the pass's own default skips only their edge forms, and
        # this graph is ATen): folded, an int8 weight became a float constant and XNNPACK ran
        # every static int8 linear as an F32 GEMM (ETDump: 39 F32 GEMMs, no QS8)
        return constant_prop_pass(fixed, custom_skip_targets=set(_QUANT_PRIMITIVES))
    except Exception as e:  # torch raises many types from a capture or a decomposition
        raise ExportError(f"ExecuTorch: re-capturing at fixed shapes failed: "
                          f"{type(e).__name__}: {first_line(e)}") from e


CASTS = ("aten.to.dtype", "aten._to_copy.default", "aten.to.dtype_layout")


def _cast_dtype(node: Any) -> Any:
    import torch

    dtype = node.kwargs.get("dtype")
    if dtype is None:
        dtype = next((a for a in node.args[1:] if isinstance(a, torch.dtype)), None)
    return dtype


def float_code_inputs(module: Any, example: tuple[Any, ...], dtype: Any = None,
                      only: int | None = None) -> tuple[int, ...]:
    """The positions of the integer inputs (all, or position `only`) that the graph module only
    casts to a float dtype (the class label, token ids: one-hot matmuls), rewritten in place to
    take `dtype` (float32 by default): a cast to that dtype leaves the graph, a cast to another
    float dtype stays. XNNPACK has no integer ops, so that cast was the one node it could not
    take (the default STOIC: 455 of 456). Integers below 2**24 are exact in float32;
    `executorch.load` casts the caller's."""
    import torch

    dtype = dtype or torch.float32
    graph = module.graph
    coded = []
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    for i, (node, value) in enumerate(zip(inputs, example, strict=True)):
        if value.is_floating_point() or (only is not None and i != only):
            continue
        uses = [u for u in node.users if u.op == "call_function"
                and not str(u.target).startswith("aten.sym_size")]  # shape reads: any dtype
        asserts = [u for u in uses if "_assert_tensor_metadata" in str(u.target)]
        casts = [u for u in uses if u not in asserts]
        if not casts or not all(str(u.target) in CASTS and _cast_dtype(u) is not None
                                and _cast_dtype(u).is_floating_point for u in casts):
            continue
        for check in asserts:
            graph.erase_node(check)
        for cast in casts:
            if _cast_dtype(cast) is dtype:
                cast.replace_all_uses_with(node)
                graph.erase_node(cast)
        coded.append(i)
    module.recompile()
    return tuple(coded)


ARITH_OPS = ("add", "sub", "mul", "div", "rsub")
ARITH = {f"aten.{op}.{kind}" for op in ARITH_OPS for kind in ("Tensor", "Scalar")}


def _scalar_operands(gm: Any) -> None:
    """The scalar operands of add / sub / mul / div on float tensors, in the tensors' dtype.
    Edge lifts a scalar operand to a 0-d tensor of the scalar's own dtype, cast at run time, and
    no delegate takes that cast:
    - an int literal (`1 + scale`) becomes a float (it was an int64 constant cast to float: 10
      on the default STOIC's adaLN);
    - on an fp16 tensor, a float literal becomes an fp16 0-d constant (an aten.full that
      constant propagation folds; it was a float32 tensor cast to fp16: 7 such casts were all the
      fp16 tiny STOIC left on the portable kernels). 1.0 - x arrives as sub(1.0, x)."""
    import torch

    aten = torch.ops.aten
    prefixes = tuple(f"aten.{op}." for op in ARITH_OPS)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not str(node.target).startswith(prefixes):
            continue
        vals = [a.meta.get("val") for a in node.args if isinstance(a, torch.fx.Node)]
        if vals and all(v is not None and v.dtype.is_floating_point for v in vals):
            node.args = tuple(float(a) if type(a) is int else a for a in node.args)
        val = vals[0] if vals else None
        if str(node.target) not in ARITH or val is None or val.dtype != torch.float16 or not any(
                type(a) is float for a in node.args):
            continue
        with gm.graph.inserting_before(node):
            args = []
            for a in node.args:
                if type(a) is float:
                    a = gm.graph.call_function(aten.full.default, ([], a),
                                               {"dtype": torch.float16})
                    a.meta["val"] = val.new_empty(())
                args.append(a)
        node.args = tuple(args)
        node.target = getattr(aten, str(node.target).split(".")[1]).Tensor
    gm.recompile()


# ---------------------------------------------------------------- dim order


def _as_view(node: Any) -> bool:
    """unsqueeze_copy (XNNPACK takes the trailing axis only) and an expand_copy that expands
    nothing, rewritten as the fixed-shape view_copy they are."""
    from executorch.exir.dialects._ops import ops as exir_ops

    edge = exir_ops.edge.aten
    if node.target not in (edge.unsqueeze_copy.default, edge.expand_copy.default):
        return False
    val, src = node.meta.get("val"), node.args[0].meta.get("val")
    if val is None or src is None or (node.target == edge.expand_copy.default
                                      and tuple(val.shape) != tuple(src.shape)):
        return False
    node.target, node.args, node.kwargs = edge.view_copy.default, (
        node.args[0], [int(d) for d in val.shape]), {}
    return True


def delegate_forms(gm: Any) -> Any:
    """An edge pass: every clone / dim-order copy that asks for a non-contiguous dim order asks
    for the contiguous one instead, and unsqueeze / no-op expand become views (see the module
    docstring)."""
    from executorch.exir.pass_base import PassResult

    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and _as_view(node):
            changed = True
            continue
        order = node.kwargs.get("dim_order") if node.op == "call_function" else None
        if order is not None and list(order) != sorted(order):
            node.kwargs = {**node.kwargs, "dim_order": list(range(len(order)))}
            val = node.meta.get("val")
            if val is not None:
                node.meta["val"] = val.contiguous()
            changed = True
    gm.recompile()
    return PassResult(gm, changed)


# ---------------------------------------------------------------- partitioners


def partitioners(backend: str, precision: str, soc: str | None) -> list[Any]:
    """The profile's partitioner (one line naming what failed when its AOT part cannot load)."""
    try:
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )

            return [XnnpackPartitioner()]
        if backend == "coreml":
            from executorch.backends.apple.coreml.partition import CoreMLPartitioner

            return [CoreMLPartitioner()]
        if backend == "vulkan":
            from executorch.backends.vulkan.partitioner.vulkan_partitioner import (
                VulkanPartitioner,
            )

            return [VulkanPartitioner()]
        return [_qnn_partitioner(precision, soc or "SM8650")]
    except ImportError as e:
        raise ExportError(f"ExecuTorch {backend} partitioner unavailable: {first_line(e)}") from e


QNN_MISMATCH = ("executorch 1.5.1's QNN AOT is built for QNN SDK 2.37 (its downloader's default); "
                "with onnxruntime-qnn 2.7.0's QNN 2.51 libHtp QNN logs 'Failed to set scatter "
                "gather parameters: unknown custom config socModel 0' and fails the device "
                "config (error 14001)")


def qnn_libraries() -> None:
    """Point ExecuTorch's QNN AOT at the QNN libraries onnxruntime-qnn ships: QNN_SDK_ROOT set
    (empty: the caller supplies the libraries) so it never downloads an SDK, and libQnnHtp /
    libQnnSystem loaded globally so its dlopen by name finds them."""
    import ctypes
    import os
    from pathlib import Path

    try:
        import onnxruntime_qnn
    except ImportError as e:
        raise ExportError("ExecuTorch qnn: needs QNN's libraries, which mobilegen takes from "
                          "onnxruntime-qnn: pip install 'mobilegen[qnn]' (ExecuTorch would "
                          "download an SDK otherwise; exports never download)") from e
    os.environ.setdefault("QNN_SDK_ROOT", "")
    root = Path(onnxruntime_qnn.__file__).parent
    for name in ("libQnnSystem.so", "libQnnHtp.so"):
        if (root / name).is_file():
            ctypes.CDLL(str(root / name), mode=ctypes.RTLD_GLOBAL)


def _qnn_partitioner(precision: str, soc: str) -> Any:
    qnn_libraries()
    from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
    from executorch.backends.qualcomm.utils.utils import (
        generate_htp_compiler_spec,
        generate_qnn_executorch_compiler_spec,
    )

    spec = generate_qnn_executorch_compiler_spec(
        soc_model=getattr(QcomChipset, soc),
        backend_options=generate_htp_compiler_spec(use_fp16=precision in ("fp16", "fp32")))
    return QnnPartitioner(spec)


def lower(programs: dict[str, Any], backend: str, precision: str, soc: str | None,
          stem: str) -> tuple[Any, bytes, dict[str, Any]]:
    """(the edge program manager after partitioning, the .pte bytes, the coverage entry of its
    "forward" method). `programs`: method name -> fixed-shape program, one per batch size."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    parts = partitioners(backend, precision, soc)
    try:
        edge = to_edge_transform_and_lower(
            programs, transform_passes=[delegate_forms], partitioner=parts,
            compile_config=EdgeCompileConfig(_check_ir_validity=False))
        found = coverage(edge, backend)  # before to_executorch adds its memory-planning nodes
        return edge, edge.to_executorch().buffer, found
    except Exception as e:  # the AOT compilers raise many types (RuntimeError, ValueError...)
        why = f"; {QNN_MISMATCH}" if backend == "qnn" and "QNN" in str(e) else ""
        raise ExportError(f"ExecuTorch {backend} lowering failed for {stem}: "
                          f"{type(e).__name__}: {first_line(e)}{why}") from e


# ---------------------------------------------------------------- coverage


def coverage(edge: Any, backend: str) -> dict[str, Any]:
    """ExecuTorch's own delegation info on the lowered graph, in the shared coverage schema:
    compute nodes the backend took, by op type, and what stayed on the portable CPU kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program("forward").graph_module)
    frame = info.get_operator_delegation_dataframe()
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    for row in frame.itertuples(index=False):
        op = str(row[0])
        if op == "Total" or op in NOT_COMPUTE:
            continue
        if int(row[1]):
            delegated[op] += int(row[1])
        if int(row[2]):
            portable[op] += int(row[2])
    supported, total = sum(delegated.values()), sum(delegated.values()) + sum(portable.values())
    left = ", ".join(f"{k} x{v}" for k, v in sorted(portable.items()))
    note = (f"{info.num_delegated_subgraphs} delegated subgraph(s); "
            + (f"on the portable CPU kernels: {left}" if portable
               else "nothing left on the portable CPU kernels"))
    return entry(ACCELERATOR[backend], TOOL, verdict_of(supported, total), supported, total,
                 portable, note, delegated_subgraphs=info.num_delegated_subgraphs,
                 delegated_ops=dict(sorted(delegated.items())),
                 portable_ops=dict(sorted(portable.items())))
