"""Graph features per operator class, counted from the aten ops one forward pass dispatches.

The calibrated latency model (measure/latency.py) prices each class separately, so the classes are
what an NPU schedules differently: dense convolutions, depthwise / grouped convolutions, matmuls
against a weight (Linear), matmuls between two activations (attention's q.k and weights.v), and the
memory-bound rest: elementwise (group norm included), activations, layer norms (layer / RMS norm:
a reduction over each token's channels), softmax (a reduction over keys), concatenation,
pooling / resize, layout copies.

Counting runs under a TorchDispatchMode, so it works on the `meta` device: SD-1.5's UNet is counted
without allocating its 3.4 GB. Views (reshape, permute, expand, ...) move no data and are no node;
every other op is one node. Elements are counted, not bytes: the caller prices them at the
precision of the row (weights and activations apart).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

OP_CLASSES = ("conv", "dwconv", "linear", "attn_matmul", "activation", "elementwise",
              "norm", "softmax", "concat", "pool_resize", "data_movement")

# zero-cost views and metadata ops (no node, no bytes)
_VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze",
    "squeeze", "slice", "select", "as_strided", "alias", "detach", "unbind", "split",
    "split_with_sizes", "chunk", "narrow", "unflatten", "flatten", "lift_fresh", "empty",
    "empty_like", "new_empty", "empty_strided", "view_as_real", "view_as_complex",
    "_reshape_alias", "sym_size", "sym_stride", "sym_numel", "is_same_size", "_to_copy_meta",
    "dim", "size", "stride", "numel", "_local_scalar_dense", "zeros", "ones", "full", "arange",
    "scalar_tensor", "new_zeros", "new_ones", "zeros_like", "ones_like", "full_like",
    "lift_fresh_copy", "_assert_tensor_metadata", "item", "copy_", "rand", "randn",
    "bernoulli_", "uniform_", "normal_", "fill_", "set_",
})
# inference batch norm: every converter folds it into the convolution before it (no node)
_FOLDED_OPS = frozenset({"_native_batch_norm_legit_no_training", "native_batch_norm",
                         "batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm",
                         "dropout", "native_dropout", "feature_dropout"})
_ACTIVATION_OPS = frozenset({"relu", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid",
                             "tanh", "leaky_relu", "prelu", "_prelu_kernel", "clamp",
                             "hardtanh", "elu", "softplus", "mish", "clamp_min", "clamp_max",
                             "threshold", "relu6", "glu"})
_POOL_OPS = ("pool", "upsample", "interpolate", "grid_sampler", "pixel_shuffle",
             "pixel_unshuffle", "im2col", "col2im", "max_pool", "avg_pool")
# layer / RMS norm over the channels of each token. Group norm is not here: no calibration row
# uses it (only the held-out SD UNet and VAE do), so it keeps the elementwise class's price
_NORM_OPS = frozenset({"native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm"})
_SOFTMAX_OPS = frozenset({"_softmax", "softmax", "_safe_softmax", "log_softmax",
                          "_log_softmax"})
_CONCAT_OPS = frozenset({"cat", "stack"})
_MOVE_OPS = frozenset({"clone", "contiguous", "_to_copy", "constant_pad_nd",
                       "index", "index_select", "gather", "embedding", "roll", "repeat",
                       "flip", "reflection_pad2d", "replication_pad2d", "masked_fill",
                       "where", "index_put", "scatter", "narrow_copy", "split_copy", "topk",
                       "sort", "argmax", "embedding_dense"})
# a lookup reads only the rows it selects, from a weight table or an activation
_GATHER_OPS = frozenset({"index", "index_select", "gather", "embedding"})
_MAC_CLASSES = ("conv", "dwconv", "linear", "attn_matmul")
_MATMUL_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addbmm"})
_SDPA_PREFIX = "_scaled_dot_product"


SPILL_ELEMS = 1 << 20  # an activation tensor this large (2 MiB in fp16) leaves on-chip memory


@dataclass
class ClassCount:
    macs: int = 0
    weight_elems: int = 0
    act_elems: int = 0
    nodes: int = 0
    spill_elems: int = 0  # the part of act_elems in tensors of >= SPILL_ELEMS elements


@dataclass
class OpFeatures:
    """Per-class MACs, weight and activation elements and node counts of one forward pass."""

    classes: dict[str, ClassCount] = field(
        default_factory=lambda: {c: ClassCount() for c in OP_CLASSES})
    op_types: dict[str, int] = field(default_factory=dict)  # aten op name -> calls
    # every MAC op (conv, dwconv, linear, attn_matmul) as (class, macs, weight elements,
    # activation elements) -> how many nodes have exactly those counts: what a per-node
    # (roofline) latency model reads; the class totals above are their sums
    mac_nodes: dict[tuple[str, int, int, int], int] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        return sum(c.nodes for c in self.classes.values())

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.classes.values())

    def to_dict(self) -> dict[str, Any]:
        return {"classes": {k: asdict(v) for k, v in self.classes.items()},
                "op_types": dict(sorted(self.op_types.items())),
                "mac_nodes": [[*k, n] for k, n in sorted(self.mac_nodes.items())],
                "nodes": self.nodes, "macs": self.macs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpFeatures:
        out = cls(op_types=dict(d.get("op_types", {})),
                  mac_nodes={(c, m, w, a): n for c, m, w, a, n in d.get("mac_nodes", [])})
        for k, v in d["classes"].items():
            out.classes[k] = ClassCount(**v)
        return out


def _numel(t: Any) -> int:
    return int(t.numel()) if hasattr(t, "numel") else 0


def _tensors(xs: Any) -> list[Any]:
    import torch

    out: list[Any] = []
    for x in xs if isinstance(xs, list | tuple) else (xs,):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, list | tuple):
            out.extend(_tensors(x))
    return out


def _read(name: str, ins: list[Any]) -> list[Any]:
    """The input tensors an op reads whole. A lookup (index, index_select, gather, embedding)
    reads only the rows it selects, as many elements as it writes: of its inputs only the index
    tensors count (the source is its first)."""
    return ins[1:] if name in _GATHER_OPS else ins


def _classify(name: str, args: tuple[Any, ...], out: Any,
              is_weight: Any) -> tuple[str, int, int, int] | None:
    """(class, macs, weight elements, activation elements) of one aten call; None for a view."""
    ins, outs = _tensors(list(args)), _tensors(out)
    w_elems = sum(_numel(t) for t in ins if is_weight(t))
    a_elems = sum(_numel(t) for t in _read(name, ins) if not is_weight(t)) + sum(
        _numel(t) for t in outs)
    if name in ("convolution", "_convolution", "conv2d", "conv1d", "conv3d",
                "cudnn_convolution", "mkldnn_convolution", "convolution_overrideable"):
        weight, groups = args[1], int(args[8] if len(args) > 8 else 1)
        transposed = bool(args[6]) if len(args) > 6 else False
        k = math.prod(weight.shape[1:])  # (Cin/groups) * kernel, or (Cout/groups) * kernel
        macs = (_numel(args[0]) if transposed else _numel(outs[0])) * k
        kind = "conv" if groups == 1 else "dwconv"
        return kind, macs, w_elems, a_elems
    if name in _MATMUL_OPS:
        mats = [t for t in ins if t.dim() >= 2]
        macs = _numel(outs[0]) * int(mats[-2].shape[-1])
        kind = "linear" if any(is_weight(t) for t in mats) else "attn_matmul"
        return kind, macs, w_elems, a_elems
    if name.startswith(_SDPA_PREFIX) or name == "scaled_dot_product_attention":
        q, k = args[0], args[1]
        lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
        heads = math.prod(q.shape[:-2])
        scores = heads * lq * lk
        return "attn_matmul", 2 * scores * d, 0, a_elems + 2 * scores
    if name in _VIEW_OPS or name in _FOLDED_OPS:
        return None
    if name in _ACTIVATION_OPS:
        return "activation", 0, w_elems, a_elems
    if name in _NORM_OPS:
        return "norm", 0, w_elems, a_elems
    if name in _SOFTMAX_OPS:
        return "softmax", 0, w_elems, a_elems
    if name in _CONCAT_OPS:
        return "concat", 0, w_elems, a_elems
    if any(p in name for p in _POOL_OPS):
        return "pool_resize", 0, w_elems, a_elems
    if name in _MOVE_OPS:
        if name in _GATHER_OPS:  # the rows it selects are read: weights or activations
            rows = sum(_numel(t) for t in outs)
            if is_weight(ins[0]):
                w_elems = rows
            else:
                a_elems += rows
        return "data_movement", 0, w_elems, a_elems
    return "elementwise", 0, w_elems, a_elems


def _fused_softmax(feats: OpFeatures, q: Any, k: Any) -> None:
    """A fused attention kernel hides the score matrix that an NPU materialises (HTP has no
    flash attention): price it as the eager graph does, a softmax over the scores, spilling
    when large, so fused and eager attention count alike."""
    scores = math.prod(q.shape[:-2]) * q.shape[-2] * k.shape[-2]
    c = feats.classes["softmax"]
    c.act_elems += 2 * scores
    c.nodes += 1
    if scores >= SPILL_ELEMS:
        c.spill_elems += 4 * scores  # written by q.k, read and written by softmax, read by .v


def count_features(model: Any, inputs: tuple[Any, ...] | dict[str, Any]) -> OpFeatures:
    """Run one forward pass under a dispatch mode and count every non-view aten op.

    A tensor is a weight when it is a parameter or buffer of `model`, or a view / cast of one
    (tracked through the ops that produce it)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.weak import WeakIdKeyDictionary

    weights: WeakIdKeyDictionary = WeakIdKeyDictionary()
    for t in list(model.parameters()) + list(model.buffers()):
        weights[t] = True
    feats = OpFeatures()

    def is_weight(t: Any) -> bool:
        return t in weights

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func._overloadpacket.__name__.rstrip("_") or func._overloadpacket.__name__
            ins = _tensors(list(args))
            if ins and all(is_weight(t) for t in ins):  # weight.t(), weight.to(fp16), ...
                for t in _tensors(out):
                    weights[t] = True
                return out
            got = _classify(name, tuple(args), out, is_weight)
            if name.startswith(_SDPA_PREFIX) or name == "scaled_dot_product_attention":
                _fused_softmax(feats, args[0], args[1])
            if got is not None:
                kind, macs, w, a = got
                c = feats.classes[kind]
                c.spill_elems += sum(_numel(t) for t in [*_read(name, ins), *_tensors(out)]
                                     if not is_weight(t) and _numel(t) >= SPILL_ELEMS)
                c.macs += macs
                c.weight_elems += w
                c.act_elems += a
                c.nodes += 1
                if kind in _MAC_CLASSES:
                    nk = (kind, int(macs), int(w), int(a))
                    feats.mac_nodes[nk] = feats.mac_nodes.get(nk, 0) + 1
                feats.op_types[name] = feats.op_types.get(name, 0) + 1
            return out

    with torch.no_grad(), Counter():
        if isinstance(inputs, dict):
            model(**inputs)
        else:
            model(*inputs)
    return feats
