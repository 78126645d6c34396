"""Counting (parameters, MACs) and timing (host latency statistics).

MACs are counted with forward hooks on the modules that do multiply-accumulates: Linear, Conv2d and
the attention kernels' two matmuls (q.k and weights.v). Norms, activations and elementwise ops are
not counted, which is also what torch.utils.flop_counter counts (matmul/conv/attention only).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModuleCost:
    name: str
    kind: str
    params: int
    macs: int


def count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class OpCost:
    """One multiply-accumulate operator call: a Linear, a Conv2d, or an attention's two matmuls
    (named `<module>.attend`). Element counts let callers price bytes at any precision."""

    name: str
    kind: str  # "Linear", "Conv2d", "attention"
    params: int
    macs: int
    weight_elems: int  # parameters read
    act_elems: int  # activation elements read and written

    def bytes_moved(self, weight_bytes: float, act_bytes: float) -> int:
        return int(self.weight_elems * weight_bytes + self.act_elems * act_bytes)


def op_costs(model: Any, inputs: tuple[Any, ...]) -> list[OpCost]:
    """Every MAC-bearing operator call of one forward pass, in call order (the one hook walker:
    MAC counts and device estimates both read it; works on the meta device)."""
    import torch
    from torch import nn

    from mobilegen.models.attention import is_token_attention

    ops: list[OpCost] = []

    def dense(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            if isinstance(m, nn.Linear):
                k = m.in_features
            else:
                k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            params = sum(p.numel() for p in m.parameters())
            ops.append(OpCost(name, type(m).__name__, params, out.numel() * k, params,
                              args[0].numel() + out.numel()))
        return hook

    def attention(name: str) -> Callable[..., None]:
        # q.k^T: B*h*Tq*Tk*d, then weights.v: B*h*Tq*Tk*d. Heads split L, so h*d = L.
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            x = args[0]
            ctx = args[1] if len(args) > 1 and args[1] is not None else x
            b, tq, dim, tk = x.shape[0], x.shape[1], m.to_q.out_features, ctx.shape[1]
            scores = b * m.heads * tq * tk
            acts = b * tq * dim * 2 + b * tk * dim * 2 + 2 * scores  # q, out, k, v, scores
            ops.append(OpCost(name + ".attend", "attention", 0, 2 * b * tq * tk * dim, 0, acts))
        return hook

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            handles.append(m.register_forward_hook(dense(name)))
        elif is_token_attention(m):
            handles.append(m.register_forward_hook(attention(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return ops


def on_meta(model: Any, inputs: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """A structural twin of `model` whose parameters and buffers live on the meta device (no
    weight is copied: deepcopy meets each tensor already in its memo), and `inputs` there too.
    Counting runs shapes only: the same MACs without a real forward pass (an SD-1.5 UNet's
    count took 8.5 s of a real forward on 2 cores; on meta, 3.4 CPU s building it included)."""
    import copy

    import torch

    memo = {id(t): (torch.nn.Parameter(t.to("meta"), t.requires_grad)
                    if isinstance(t, torch.nn.Parameter) else t.to("meta"))
            for t in [*model.parameters(), *model.buffers()]}
    twin = copy.deepcopy(model, memo)
    return twin, tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)


def count_macs(model: Any, inputs: tuple[Any, ...]) -> tuple[int, list[ModuleCost]]:
    """Total MACs of one forward pass on `inputs` and the cost per leaf module (a module called
    several times is one row with the sum)."""
    rows: dict[str, ModuleCost] = {}
    for op in op_costs(model, inputs):
        prev = rows.get(op.name)
        rows[op.name] = ModuleCost(op.name, op.kind, op.params,
                                   op.macs + (prev.macs if prev else 0))
    return sum(r.macs for r in rows.values()), list(rows.values())


def group_costs(table: list[ModuleCost], depth: int = 2) -> list[dict[str, Any]]:
    """Sum a leaf table by name prefix (e.g. 'blocks.3') for a readable per-module view."""
    groups: dict[str, dict[str, Any]] = {}
    for row in table:
        key = ".".join(row.name.split(".")[:depth])
        g = groups.setdefault(key, {"module": key, "params": 0, "macs": 0})
        g["params"] += row.params
        g["macs"] += row.macs
    return list(groups.values())


def flop_counter_macs(model: Any, inputs: tuple[Any, ...]) -> int:
    """MACs as torch.utils.flop_counter sees them (FLOPs / 2), under the math attention backend
    because the CPU flash-attention kernel has no FLOP formula."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        counter = FlopCounterMode(display=False)
        with counter:
            model(*inputs)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    runs: int
    warmup: int
    threads: int
    from_parity: int = 0  # how many of the runs were timed parity / reference calls

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.from_parity:
            out.pop("from_parity")
        return out


def time_fn(fn: Callable[[], Any], warmup: int, runs: int, threads: int,
            progress: Callable[[int, int], None] | None = None,
            timed: Sequence[float] = ()) -> LatencyStats:
    """Warm up, then time `runs` calls with a monotonic clock; `progress(done, warmup + runs)`
    after each call (outside the timed span). `timed`: calls already timed the same way (ms; a
    big model's parity call, export/validation_scope.py) that count among the runs."""
    for i in range(warmup):
        fn()
        if progress is not None:
            progress(i + 1, warmup + runs)
    samples = list(timed)[:runs]
    for i in range(len(samples), runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if progress is not None:
            progress(warmup + i + 1, warmup + runs)
    samples.sort()
    p90 = samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))]
    return LatencyStats(
        median_ms=statistics.median(samples),
        p90_ms=p90,
        min_ms=samples[0],
        mean_ms=statistics.fmean(samples),
        runs=runs,
        warmup=warmup,
        threads=threads,
        from_parity=min(len(timed), runs),
    )


def time_torch(
    model: Any, inputs: tuple[Any, ...], warmup: int, runs: int, threads: int,
    progress: Callable[[int, int], None] | None = None, timed: Sequence[float] = (),
) -> LatencyStats:
    import torch

    with torch_threads(threads), torch.inference_mode():
        return time_fn(lambda: model(*inputs), warmup, runs, threads, progress, timed)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `threads` for the block, then restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
