"""Per-block latency tables and onnxruntime operator profiles (SnapFusion's "profile first").

A model is cut into its repeated blocks (STOIC: every core block) plus the "rest" (stem, time MLP,
decoder: the model with each block replaced by a pass-through). Each distinct block is exported on
its own at the input shapes it really sees (captured with forward hooks), timed in onnxruntime, and
multiplied by how often it occurs; the rest is timed the same way. The sum of the table predicts
the whole model, which is exported and timed too, and the error between the two is reported.

Distinct means: same class, same parameter shapes, same input shapes. Weight values do not change
the latency of dense kernels, so STOIC's N blocks collapse into one timed row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobilegen.errors import ConfigError, ExportError, first_line
from mobilegen.measure.costs import LatencyStats, count_macs, count_params


@dataclass(frozen=True)
class BlockRow:
    block: str  # the first module path of this kind, e.g. "blocks.0"
    kind: str  # class name, or "rest"
    count: int
    input_shapes: str
    macs: int  # per instance
    params: int  # per instance
    latency_ms: float  # median per instance
    p90_ms: float
    min_ms: float
    total_ms: float  # latency_ms * count

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BlockTable:
    rows: list[BlockRow]
    whole_ms: float  # the whole model, exported and timed the same way (median)
    whole_min_ms: float
    whole_macs: int
    call_overhead_ms: float  # one session.run of an Identity graph: paid once per timed part
    call_overhead_min_ms: float
    runtime: str
    threads: int
    runs: int
    warmup: int

    @property
    def calls(self) -> int:
        return sum(r.count for r in self.rows)

    @property
    def sum_ms(self) -> float:
        """The table's prediction: every part's median, less the per-call overhead that the
        whole model pays once but the separately timed parts pay each (calls - 1 extra)."""
        raw = sum(r.total_ms for r in self.rows)
        return raw - (self.calls - 1) * self.call_overhead_ms

    @property
    def raw_sum_ms(self) -> float:
        return sum(r.total_ms for r in self.rows)

    @property
    def error_pct(self) -> float:
        """(prediction - measured whole) / measured whole, in %, on medians."""
        return 100.0 * (self.sum_ms - self.whole_ms) / self.whole_ms

    @property
    def error_min_pct(self) -> float:
        """The same error on per-run minima: the least load-sensitive figure on a busy host."""
        total = sum(r.min_ms * r.count for r in self.rows)
        total -= (self.calls - 1) * self.call_overhead_min_ms
        return 100.0 * (total - self.whole_min_ms) / self.whole_min_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime, "threads": self.threads, "runs": self.runs,
            "warmup": self.warmup, "rows": [r.to_dict() for r in self.rows],
            "raw_sum_ms": self.raw_sum_ms, "call_overhead_ms": self.call_overhead_ms,
            "sum_ms": self.sum_ms, "whole_ms": self.whole_ms, "whole_macs": self.whole_macs,
            "error_pct": self.error_pct, "whole_min_ms": self.whole_min_ms,
            "error_min_pct": self.error_min_pct,
        }


def default_block_types(model: Any) -> tuple[type, ...]:
    """The repeated block classes of a known family; others must be passed explicitly."""
    from mobilegen.models.stoic import Stoic, StoicBlock

    if isinstance(model, Stoic):
        return (StoicBlock,)
    raise ConfigError(f"no default block types for {type(model).__name__} (expected Stoic); "
                      "pass block_types explicitly")


@dataclass
class _Call:
    name: str
    module: Any
    args: tuple[Any, ...]
    out_shape: tuple[int, ...]
    names: list[str] = field(default_factory=list)


def _shape_key(args: tuple[Any, ...]) -> tuple[Any, ...]:
    import torch

    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else repr(a) for a in args)


def capture_blocks(model: Any, example: tuple[Any, ...],
                   block_types: tuple[type, ...]) -> list[_Call]:
    """One forward pass; group the calls of outermost `block_types` modules into distinct kinds."""
    import torch

    calls: list[_Call] = []
    handles = []
    top = [(n, m) for n, m in model.named_modules() if isinstance(m, block_types)]
    # Outermost only: a block nested in another block is timed as part of its parent.
    top = [(n, m) for n, m in top if not any(n.startswith(p + ".") for p, _ in top)]
    if not top:
        raise ConfigError(f"{type(model).__name__} has no modules of type "
                          f"{[t.__name__ for t in block_types]}")

    def hook(name: str) -> Any:
        def fn(m: Any, args: tuple[Any, ...], out: torch.Tensor) -> None:
            detached = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a
                             for a in args)
            calls.append(_Call(name, m, detached, tuple(out.shape)))
        return fn

    for name, m in top:
        handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in handles:
            h.remove()
    kinds: dict[tuple[Any, ...], _Call] = {}
    for c in calls:
        pshapes = tuple(tuple(p.shape) for p in c.module.parameters())
        key = (type(c.module).__name__, pshapes, _shape_key(c.args))
        first = kinds.setdefault(key, c)
        first.names.append(c.name)
    return list(kinds.values())


class _TensorArgs:
    """Split a call's args into the tensors (graph inputs) and the rest (bound constants)."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        import torch

        self.args = args
        self.tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def tensors(self) -> tuple[Any, ...]:
        return tuple(self.args[i] for i in self.tensor_pos)

    def merge(self, tensors: tuple[Any, ...]) -> tuple[Any, ...]:
        full = list(self.args)
        for i, t in zip(self.tensor_pos, tensors, strict=True):
            full[i] = t
        return tuple(full)


def _bound(module: Any, split: _TensorArgs) -> Any:
    from torch import nn

    class Bound(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *tensors: Any) -> Any:
            return self.inner(*split.merge(tensors))

    return Bound().eval()


class _PassThrough:
    """Replaces a shape-preserving block: returns its first argument unchanged."""

    @staticmethod
    def make(out_shape: tuple[int, ...]) -> Any:
        from torch import nn

        class PassThrough(nn.Module):
            def forward(self, x: Any, *rest: Any) -> Any:
                if tuple(x.shape) != out_shape:
                    raise ConfigError(
                        f"block maps {tuple(x.shape)} to {out_shape}; the 'rest' model needs "
                        "shape-preserving blocks")
                return x

        return PassThrough()


def export_onnx(module: Any, args: tuple[Any, ...], path: Path, opset: int = 20) -> Path:
    """A plain fixed-shape dynamo export (no .ort, no signature renaming) for timing."""
    import torch

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    names = [f"in{i}" for i in range(len(args))]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                              input_names=names, external_data=False, verbose=False)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {path.name}: "
                          f"{first_line(e)}") from e
    return path


def _session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Sessions are timed round-robin: a finished session's spinning pool threads would steal the
    # cores from the next one (measured: whole model 11.7 ms interleaved vs 3.9 ms alone).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(session: Any, tensors: Sequence[Any]) -> dict[str, Any]:
    names = [i.name for i in session.get_inputs()]
    # The exporter drops inputs the graph never reads (e.g. an unused timestep): feed by name.
    by_name = {f"in{i}": t.numpy() for i, t in enumerate(tensors)}
    return {n: by_name[n] for n in names}


def time_interleaved(jobs: Sequence[tuple[Path, Sequence[Any]]], threads: int, warmup: int,
                     runs: int) -> list[LatencyStats]:
    """Time several ONNX models round-robin (one run of each per round), so a load spike on this
    shared machine lands on all of them alike instead of on whichever was being timed."""
    import time

    sessions = [_session(path, threads) for path, _ in jobs]
    feeds = [_feeds(s, tensors) for s, (_, tensors) in zip(sessions, jobs, strict=True)]
    samples: list[list[float]] = [[] for _ in jobs]
    for round_ in range(warmup + runs):
        for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            t0 = time.perf_counter()
            s.run(None, f)
            if round_ >= warmup:
                samples[i].append((time.perf_counter() - t0) * 1000.0)
    return [_stats(x, warmup, threads) for x in samples]


def _stats(samples: list[float], warmup: int, threads: int) -> LatencyStats:
    samples = sorted(samples)
    p90 = samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))]
    return LatencyStats(statistics.median(samples), p90, samples[0], statistics.fmean(samples),
                        len(samples), warmup, threads)


def block_table(
    model: Any, example: tuple[Any, ...], block_types: tuple[type, ...] | None = None,
    threads: int = 2, warmup: int = 5, runs: int = 30, workdir: Path | None = None,
) -> BlockTable:
    """Export and time each distinct block, the rest and the whole model in onnxruntime (CPU)."""
    import copy

    from torch import nn

    model = model.eval()
    block_types = block_types or default_block_types(model)
    kinds = capture_blocks(model, example, block_types)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blocks-")))
        workdir.mkdir(parents=True, exist_ok=True)
        jobs: list[tuple[Path, Sequence[Any]]] = []
        meta: list[tuple[str, str, int, str, int, int]] = []
        for i, kind in enumerate(kinds):
            split = _TensorArgs(kind.args)
            bound = _bound(kind.module, split)
            tensors = split.tensors()
            jobs.append((export_onnx(bound, tensors, workdir / f"block{i}.onnx"), tensors))
            macs, _ = count_macs(bound, tensors)
            meta.append((kind.name, type(kind.module).__name__, len(kind.names),
                         _shapes(tensors), macs, count_params(kind.module)))
        # The rest: a copy of the model whose blocks pass their input through.
        rest = copy.deepcopy(model)
        modules = dict(rest.named_modules())
        for kind in kinds:
            for name in kind.names:
                parent_name, _, attr = name.rpartition(".")
                parent = modules[parent_name] if parent_name else rest
                replacement: nn.Module = _PassThrough.make(kind.out_shape)
                if isinstance(parent, nn.ModuleList | nn.Sequential):
                    parent[int(attr)] = replacement
                else:
                    setattr(parent, attr, replacement)
        jobs.append((export_onnx(rest, example, workdir / "rest.onnx"), example))
        rest_macs, _ = count_macs(rest, example)
        meta.append(("rest", "rest", 1, _shapes(example), rest_macs, count_params(rest)))
        jobs.append((export_onnx(model, example, workdir / "whole.onnx"), example))
        jobs.append((_identity_onnx(example[0], workdir / "identity.onnx"), example[:1]))
        stats = time_interleaved(jobs, threads, warmup, runs)
    rows = [BlockRow(*m, s.median_ms, s.p90_ms, s.min_ms, s.median_ms * m[2])
            for m, s in zip(meta, stats, strict=False)]
    whole_macs, _ = count_macs(model, example)
    whole, overhead = stats[-2], stats[-1]
    return BlockTable(rows, whole.median_ms, whole.min_ms, whole_macs, overhead.median_ms,
                      overhead.min_ms, "onnxruntime-cpu", threads, runs, warmup)


def _identity_onnx(x: Any, path: Path) -> Path:
    """A one-node graph: timing it gives the fixed cost of one session.run call."""
    import onnx
    from onnx import TensorProto, helper

    shape = list(x.shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["in0"], ["out"])], "identity",
        [helper.make_tensor_value_info("in0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def _shapes(tensors: Sequence[Any]) -> str:
    return ", ".join("x".join(map(str, t.shape)) for t in tensors)


# ---------------------------------------------------------------- operator profile

ATTENTION_CLASS_SUFFIX = ".Attention"  # module classes whose nodes count as attention


def _node_scopes(onnx_path: Path) -> dict[str, str]:
    """ONNX node name -> the dynamo exporter's `namespace` metadata (module path and classes)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {n.name: next((p.value for p in n.metadata_props if p.key == "namespace"), "")
            for n in model.graph.node}


def attribute(namespace: str) -> str:
    """'attention_core' (q.k, softmax, .v), 'attention_proj' (q/k/v/out Linear), 'other'.

    The namespace reads 'path: Class/path: Class/...'; a node is attention when any enclosing
    module's class name ends in '.Attention', and a projection when it also sits in a Linear."""
    parts = [p.split(": ", 1) for p in namespace.split("/") if ": " in p]
    classes = [c for _, c in parts]
    if not any(c.endswith(ATTENTION_CLASS_SUFFIX) for c in classes):
        return "other"
    inside = classes[next(i for i, c in enumerate(classes) if c.endswith(ATTENTION_CLASS_SUFFIX)):]
    return "attention_proj" if any(c.endswith(".Linear") for c in inside) else "attention_core"


def op_profile(onnx_path: Path, tensors: Sequence[Any], threads: int = 2, warmup: int = 3,
               runs: int = 10, top: int = 10) -> dict[str, Any]:
    """Median kernel time per node over `runs` profiled runs, grouped by op type, with the
    attention share. ORT names fused/rewritten nodes '<original>/<Fusion>...'; nodes ORT inserts
    itself (layout reorders, reshapes around Gemm) match no exported node and count as 'other'."""
    with tempfile.TemporaryDirectory(prefix="ortprof-") as tmp:
        session = _session(onnx_path, threads, profile_prefix=str(Path(tmp) / "p"))
        feeds = _feeds(session, tensors)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"].removesuffix("_kernel_time")
        per_node.setdefault(node, []).append(e["dur"] / 1000.0)
        op_of[node] = e["args"].get("op_name", "?")
    scopes = _node_scopes(onnx_path)
    by_op: dict[str, float] = {}
    by_part = {"attention_core": 0.0, "attention_proj": 0.0, "other": 0.0}
    for node, durs in per_node.items():
        ms = statistics.median(durs[warmup:] or durs)  # the first runs include one-time setup
        op = op_of[node]
        by_op[op] = by_op.get(op, 0.0) + ms
        by_part[attribute(scopes.get(node.split("/")[0], ""))] += ms
    total = sum(by_op.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {
        "total_kernel_ms": total,
        "top_ops": [{"op": op, "ms": ms, "share": ms / total} for op, ms in ops[:top]],
        "attention_share": (by_part["attention_core"] + by_part["attention_proj"]) / total,
        "attention_core_share": by_part["attention_core"] / total,
        "attention_proj_share": by_part["attention_proj"] / total,
        "attribution": "a node is attention when the dynamo exporter's namespace puts it inside "
                       "a module whose class ends in '.Attention'; 'core' = q.k, softmax and .v, "
                       "'proj' = the q/k/v/out Linear layers; nodes ORT inserts count as other",
        "runs": runs,
        "threads": threads,
    }


def report_section(model: Any, example: tuple[Any, ...], threads: int = 2, warmup: int = 3,
                   runs: int = 20) -> dict[str, Any]:
    """report.json's `blocks` section: the block table plus the whole model's operator profile."""
    with tempfile.TemporaryDirectory(prefix="blocks-") as tmp:
        table = block_table(model, example, threads=threads, warmup=warmup, runs=runs,
                            workdir=Path(tmp))
        section = table.to_dict()
        section["op_profile"] = op_profile(Path(tmp) / "whole.onnx", example, threads=threads,
                                           warmup=warmup, runs=runs)
    return section
