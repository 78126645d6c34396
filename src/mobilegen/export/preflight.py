"""Memory preflight: before the heavy steps, estimate an export's peak memory from its weight
bytes and targets, compare it with the memory this process may use, and decide: all targets in
this process, each target in its own child process from a saved capture (export/isolated.py:
only one target's converter state is ever resident), or refuse with one line (exit 1) instead of
being killed halfway.

The estimate is linear in the fp32 weight bytes W: every measured peak of the pipeline grows with
W (the weights are copied by the exporters, sessions and converters), plus a fixed baseline for
the interpreter and the libraries. The factors below were measured (measure/memory.py, whole
process tree, RSS) on SD-1.5-shaped UNets; every report.json puts the estimate next to the
measured peak, so its error stays visible (benchmarks/bench_sd_pipeline.py prints both).

`MOBILEGEN_ISOLATE_TARGETS=1` picks child processes whatever the estimate says.

The limit is, first, `MOBILEGEN_MEMORY_LIMIT_GB` (an override: tests, a CI runner's budget, a
laptop that must keep room for other work), else the cgroup's memory limit when one is set, else
MemAvailable plus what this process tree already holds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mobilegen.errors import MobilegenError
from mobilegen.measure.memory import GB

ENV_LIMIT = "MOBILEGEN_MEMORY_LIMIT_GB"
ENV_ISOLATE = "MOBILEGEN_ISOLATE_TARGETS"  # "1": child processes per target whatever the estimate
ENV_BESIDE = "MOBILEGEN_TARGETS_BESIDE"  # "0": isolated children strictly one after another

BASELINE_GB = 1.0  # interpreter, torch, onnxruntime and the converters' own code, per process
# Peak of each runtime's lowering + validation, in multiples of the fp32 weight bytes, on top of
# the weights the capture holds (measured: see the module docstring and the README's table).
# Core ML: its SD-1.5 child peaked at 6.18 GB (then 5.57 GB) with 3.44 GB of weights, i.e. 0.62x
# (0.43x) on top of the weights with BASELINE_GB. Its 1.6 before was set with the first
# preflight, before Core ML lost its fixed-batch retry and captures were read back mapped.
TARGET_FACTOR = {"onnxruntime": 1.6, "litert": 1.9, "coreml": 0.7, "qnn": 1.9}
DEFAULT_FACTOR = 2.0  # a runtime without its own measurement
# A target lowering beside an untimed one (export/isolated.py) waits for it before it opens a
# session, so only its lowering overlaps: its child's peak up to then, in the same multiples.
# Measured on SD-1.5's UNet (3.44 GB): ORT's child 4.49 GB inside torch.onnx.export (0.09x),
# LiteRT's 6.99 GB inside its conversion (0.87x).
LOWERING_FACTOR = {"onnxruntime": 0.2, "litert": 1.0}
# The parent while its children run: it has dropped the model (measured 0.36-0.47 GB at SD size)
PARENT_ISOLATED_GB = 0.6
# Before the lowering (count, capture, reference runs, calibration) the tree holds about this
# many copies of the weights.
PREPARE_FACTOR = 1.3
# In-process, the captured program keeps the model's weights, and glibc keeps part of what each
# converter freed: the next target starts on top of it.
IN_PROCESS_RESIDUE = 0.4


class MemoryPreflightError(MobilegenError):
    """The export would not fit in memory even one target at a time (exit 1)."""


@dataclass(frozen=True)
class Preflight:
    param_bytes: int
    targets: tuple[str, ...]
    limit_gb: float
    limit_source: str  # "MOBILEGEN_MEMORY_LIMIT_GB", "cgroup", "MemAvailable"
    in_process_gb: float  # estimated peak with every target in this process
    isolated_gb: float  # estimated peak with each target in its own child process
    peak_target: str  # the target that sets the estimate
    isolate: bool
    # (timed, untimed) target pairs whose children run at the same time (export/isolated.py),
    # and the estimated peak of the largest such pair
    beside: tuple[tuple[str, str], ...] = ()
    beside_gb: float = 0.0

    def estimate_gb(self, isolated: bool) -> float:
        return max(self.isolated_gb, self.beside_gb) if isolated else self.in_process_gb

    def to_dict(self) -> dict[str, Any]:
        mode = "one target per child process" if self.isolate else "in process"
        if self.beside:
            mode += "; beside each other: " + ", ".join(f"{t} + {u}" for t, u in self.beside)
        return {"preflight": {**asdict(self), "targets": list(self.targets),
                              "beside": [list(p) for p in self.beside], "mode": mode,
                              "estimate_gb": self.estimate_gb(self.isolate),
                              "note": "ESTIMATE: linear in the fp32 weight bytes, factors "
                                      "measured on SD-1.5-shaped UNets (export/preflight.py)"}}


def _runtime(target: str) -> str:
    from mobilegen.targets.profile import load_target

    return load_target(target).runtime


def estimate(param_bytes: int, targets: list[str] | tuple[str, ...]) -> tuple[float, float, str]:
    """(in-process peak GB, isolated peak GB, the target that sets them)."""
    w = param_bytes / GB
    factors = {t: TARGET_FACTOR.get(_runtime(t), DEFAULT_FACTOR) for t in targets}
    worst = max(factors, key=lambda t: factors[t]) if factors else "capture"
    f = factors.get(worst, 0.0)
    prepare = BASELINE_GB + PREPARE_FACTOR * w
    # in process: the model (and its capture) stay resident while each target lowers
    in_process = max(prepare, BASELINE_GB + w * (1 + IN_PROCESS_RESIDUE + f))
    # isolated: the parent has dropped the model; the child loads the capture and lowers
    isolated = max(prepare, 2 * BASELINE_GB + w * (1 + f))
    return round(in_process, 2), round(isolated, 2), worst


def untimed_here(target: str) -> bool:
    """Whether a target's artifacts are never run on this host, so nothing of it is timed: Core
    ML predicts only on macOS (targets/coreml.can_predict)."""
    import platform

    return _runtime(target) == "coreml" and platform.system() != "Darwin"


def beside_estimate(param_bytes: int, timed: str, untimed: str) -> float | None:
    """Estimated tree peak while `untimed`'s child runs beside `timed`'s lowering (None: no
    lowering factor was measured for `timed`'s runtime)."""
    w = param_bytes / GB
    lowering = LOWERING_FACTOR.get(_runtime(timed))
    if lowering is None:
        return None
    whole = TARGET_FACTOR.get(_runtime(untimed), DEFAULT_FACTOR)
    return round(PARENT_ISOLATED_GB + 2 * BASELINE_GB + w * (2 + whole + lowering), 2)


def pair_beside(param_bytes: int, targets: tuple[str, ...],
                limit: float) -> tuple[tuple[tuple[str, str], ...], float]:
    """In recipe order, each untimed target with the first timed one left whose pair fits the
    limit: on a 2-core host the untimed conversion takes the core the other's lowering leaves
    idle. -> (pairs, the largest pair's estimate)."""
    untimed = [t for t in targets if untimed_here(t)]
    free = [t for t in targets if t not in untimed]
    pairs, worst = [], 0.0
    for u in untimed:
        for t in free:
            est = beside_estimate(param_bytes, t, u)
            if est is not None and est <= limit:
                pairs.append((t, u))
                free.remove(t)
                worst = max(worst, est)
                break
    return tuple(pairs), worst


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_limit() -> tuple[float, str] | None:
    """(GB this export may use, where that figure comes from), or None where unknown."""
    raw = os.environ.get(ENV_LIMIT)
    if raw:
        try:
            value = float(raw)
        except ValueError as e:
            raise MemoryPreflightError(f"{ENV_LIMIT} must be a number of GB, found {raw!r}") from e
        if value <= 0:
            raise MemoryPreflightError(f"{ENV_LIMIT} must be > 0, found {raw!r}")
        return value, ENV_LIMIT
    if (cg := _cgroup_limit()) is not None:
        return cg / GB, "cgroup"
    if (avail := _mem_available()) is not None:
        from mobilegen.measure.memory import tree_memory

        held = tree_memory()[0] if Path("/proc/self/smaps_rollup").is_file() else 0
        return (avail + held) / GB, "MemAvailable"
    return None


def check(recipe: Any, param_bytes: int) -> Preflight:
    """The decision for one export; raises MemoryPreflightError when even isolation cannot fit."""
    targets = tuple(recipe.targets)
    in_process, isolated, worst = estimate(param_bytes, targets)
    found = memory_limit()
    limit, source = found if found is not None else (float("inf"), "unknown")
    forced = os.environ.get(ENV_ISOLATE, "") == "1"
    isolate = (forced or in_process > limit) and len(targets) > 0
    beside, beside_gb = (), 0.0
    # a precision row's lowering (calibration runs, quantization) has no measured lowering
    # factor: such an export keeps its children one after another
    if isolate and os.environ.get(ENV_BESIDE, "") != "0" and not _precision_rows(recipe):
        beside, beside_gb = pair_beside(param_bytes, targets, limit)
    gate = Preflight(param_bytes, targets, round(limit, 2), source, in_process, isolated, worst,
                     isolate, beside, beside_gb)
    if (in_process > limit or forced) and isolated > limit:
        raise MemoryPreflightError(
            f"memory preflight: {recipe.name} needs an estimated {isolated:.1f} GB at its peak "
            f"({worst}, one target at a time; {param_bytes / GB:.2f} GB of fp32 weights), but "
            f"{limit:.1f} GB is available ({source}); nothing was exported")
    return gate


def _precision_rows(recipe: Any) -> bool:
    from mobilegen.passes.precision import precision_plan

    return bool(precision_plan(recipe).specs)


def recipe_param_bytes(recipe: Any) -> int:
    """fp32 weight bytes of a recipe's model without building its weights: a random init is
    built on the meta device; a checkpoint's tensors are summed from its header (safetensors)
    or its file size. For the Ray path, which sizes each task before any export starts."""
    import torch

    from mobilegen.models import get_family

    spec = recipe.model
    family = get_family(spec.family)
    if spec.init == "random":
        cfg = (family.config_from_dict(spec.config) if spec.config is not None
               else family.variants()[spec.variant])
        with torch.device("meta"):
            model = family.build(cfg)
        return sum(p.numel() * 4 for p in model.parameters())
    path = recipe.checkpoint_path()
    if path.is_dir():  # a diffusers component folder: its weight files (a VAE's encoder too)
        return sum(_file_param_bytes(f) for f in sorted(path.glob("*.safetensors")))
    return _file_param_bytes(path)


def _file_param_bytes(path: Path) -> int:
    """fp32 bytes of a safetensors file's tensors from its header; else the file's size (an
    unreadable header is the export's to report, as it would be locally)."""
    if path.suffix == ".safetensors":
        import contextlib

        from safetensors import SafetensorError, safe_open

        with contextlib.suppress(OSError, SafetensorError), \
                safe_open(str(path), framework="pt") as f:
            return sum(4 * _numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return path.stat().st_size if path.is_file() else 0


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
