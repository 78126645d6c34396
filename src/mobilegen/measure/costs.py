"""Counting (parameters, MACs) and timing (host latency statistics).

MACs are counted with forward hooks on the modules that do multiply-accumulates: Linear, Conv2d and
the attention kernels' two matmuls (q.k and weights.v). Norms, activations and elementwise ops are
not counted, which is also what torch.utils.flop_counter counts (matmul/conv/attention only).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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


def count_macs(model: Any, inputs: tuple[Any, ...]) -> tuple[int, list[ModuleCost]]:
    """Total MACs of one forward pass on `inputs` and the cost per leaf module."""
    import torch
    from torch import nn

    from mobilegen.models.attention import AttentionKernel  # noqa: F401  (kernels share shapes)

    costs: dict[str, int] = {}
    handles = []

    def linear_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Linear, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            costs[name] = costs.get(name, 0) + out.numel() * m.in_features

        return hook

    def conv_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Conv2d, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            costs[name] = costs.get(name, 0) + out.numel() * k

        return hook

    def attention_hook(name: str) -> Callable[..., None]:
        # q.k^T: B*h*Tq*Tk*d, then weights.v: B*h*Tq*Tk*d. Heads split L, so h*d = L.
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            x = args[0]
            context = args[1] if len(args) > 1 and args[1] is not None else x
            b, tq, dim = x.shape[0], x.shape[1], m.to_q.out_features
            tk = context.shape[1]
            costs[name + ".attend"] = costs.get(name + ".attend", 0) + 2 * b * tq * tk * dim

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook(name)))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif hasattr(m, "kernel") and hasattr(m, "to_q") and hasattr(m, "heads"):
            handles.append(m.register_forward_hook(attention_hook(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    table = []
    for name, macs in costs.items():
        mod_name = name.removesuffix(".attend")
        m = modules[mod_name]
        kind = "attention" if name.endswith(".attend") else type(m).__name__
        params = 0 if name.endswith(".attend") else sum(p.numel() for p in m.parameters())
        table.append(ModuleCost(name, kind, params, macs))
    return sum(costs.values()), table


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_fn(fn: Callable[[], Any], warmup: int, runs: int, threads: int,
            progress: Callable[[int, int], None] | None = None) -> LatencyStats:
    """Warm up, then time `runs` calls with a monotonic clock; `progress(done, warmup + runs)`
    after each call (outside the timed span)."""
    for i in range(warmup):
        fn()
        if progress is not None:
            progress(i + 1, warmup + runs)
    samples = []
    for i in range(runs):
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
    )


def time_torch(
    model: Any, inputs: tuple[Any, ...], warmup: int, runs: int, threads: int,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyStats:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return time_fn(lambda: model(*inputs), warmup, runs, threads, progress)
    finally:
        torch.set_num_threads(previous)
