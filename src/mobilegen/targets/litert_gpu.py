"""LiteRT's own GPU accelerator, run on this host: placement, numerics and precision of a .tflite.

ai-edge-litert 2.3 ships `libLiteRtWebGpuAccelerator.so`, the GPU accelerator LiteRT uses on
phones, over WebGPU (Dawn) on Vulkan. With a Vulkan driver Dawn accepts (a real GPU's, or the
SwiftShader software driver: targets/vulkan_driver.py) `CompiledModel` compiles a .tflite for it
here, so the GPU's own engine says which ops it takes and computes the outputs. Kernels are
generated per backend (OpenCL on most Android phones, WebGPU here), so numerics here are evidence,
not a phone's exact bits, and SwiftShader's time is host CPU time, never device latency.

What the accelerator can say (ai-edge-litert 2.3's Python API, checked): `is_fully_accelerated()`
and nothing per op. With CPU in the accelerator set that answer is True even where ops fell back
to the CPU (measured on a PAD the GPU rejects), so placement is asked with the GPU alone: it then
either compiles (every op on the GPU) or refuses with "Some ops are not accelerated", and its
log on fd 2 names each op type it rejects with the reason and counts the ops on each side. No
per-op profiler is exposed in these bindings (`profiling_info_pb2` / `model_runtime_info_pb2`
ship as message types only; nothing returns them). The child process (litert_gpu_worker.py)
captures that log; this module parses it.

Precision: phones run the GPU in fp16 unless `GpuOptions(enforce_f32=True)`. The run here
compiles twice, with enforce_f32 False (what an app gets by default) and True, and compares the
outputs on the same inputs: identical outputs mean the default compile computed in f32 too (no
shader-f16 on the adapter; SwiftShader 5.0 reports shaderFloat16 = false), and the artifact says
so; fp16 evidence then comes from the fp16 safety check (passes/fp16_safety.py).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ExportError
from mobilegen.targets.vulkan_driver import Driver, find_driver

TOOL = "ai_edge_litert CompiledModel, GPU accelerator (WebGPU/Dawn on Vulkan)"
COMPILE_TIMEOUT_S = 1800.0  # an SD-size graph compiles its kernels on a software driver
CALL_TIMEOUT_S = 600.0
START_TIMEOUT_S = 120.0
NOT_ACCELERATED = "Some ops are not accelerated"
_UNSUPPORTED_HEAD = "Following operations are not supported by GPU delegate:"
_COUNTS = re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+) "
                     r"operations will run on the CPU")
_ADAPTER = re.compile(r"Selected adapter: (.+)$")
_OP_LINE = re.compile(r"^([A-Z][A-Z0-9_]*): ?(.*)$")


class GpuWorkerError(ExportError):
    """The accelerator's process died, hung or answered with an error."""


# ---------------------------------------------------------------- the child process


class GpuWorker:
    """A child process running the accelerator (litert_gpu_worker.py); its stderr is ours (the
    export's toolchain log while a target runs)."""

    def __init__(self, driver: Driver) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mobilegen.targets.litert_gpu_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **driver.env()})
        self._finalizer = weakref.finalize(self, _stop, self.proc)

    def request(self, req: tuple[Any, ...], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        from mobilegen.targets.litert_gpu_worker import write_frame

        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            write_frame(self.proc.stdin, req)
            head = self._read(8, timeout)
            (n,) = struct.unpack("<Q", head)
            reply: dict[str, Any] = pickle.loads(self._read(n, timeout))
        except (BrokenPipeError, OSError) as e:
            self.close()
            raise GpuWorkerError(f"the GPU accelerator's process failed ({self._why()}): "
                                 f"{type(e).__name__}") from None
        if not reply.get("ok") and req[0] != "compile":
            raise GpuWorkerError(f"the GPU accelerator failed: {reply.get('error')}")
        return reply

    def _read(self, n: int, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks, left = [], n
        while left:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                self.close()
                raise GpuWorkerError(f"the GPU accelerator did not answer within {timeout:.0f} "
                                     "s (stopped)")
            data = os.read(fd, min(left, 1 << 20))
            if not data:
                self.close()
                raise GpuWorkerError(f"the GPU accelerator's process ended ({self._why()})")
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)

    def _why(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> GpuWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        if proc.poll() is None and proc.stdin is not None:
            proc.stdin.close()  # EOF: the worker returns
        proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for f in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError, ValueError):
            if f is not None:
                f.close()


# ---------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """What one GPU-only compile said."""

    compiled: bool  # every op on the GPU
    fully_accelerated: bool | None  # CompiledModel.is_fully_accelerated() when it compiled
    unsupported: dict[str, str]  # op type -> the accelerator's reason (may be empty text)
    gpu_ops: int | None  # the accelerator's own counts, when it printed them
    cpu_ops: int | None
    adapter: str
    seconds: float
    error: str = ""


def parse_log(log: str) -> tuple[dict[str, str], int | None, int | None, str]:
    """(rejected op type -> reason, ops on the GPU, ops left to the CPU, adapter) from the
    accelerator's compile log."""
    unsupported: dict[str, str] = {}
    gpu = cpu = None
    adapter = ""
    reading = False
    for raw in log.splitlines():
        line = raw.strip()
        if m := _ADAPTER.search(line):
            adapter = m.group(1)
        if line.endswith(_UNSUPPORTED_HEAD):
            reading = True
            continue
        if m := _COUNTS.search(line):
            gpu, cpu = int(m.group(1)), int(m.group(2))
            reading = False
            continue
        if reading and (m := _OP_LINE.match(line)):
            op, reason = m.group(1), m.group(2).strip()
            reason = reason.removeprefix(f"{op}:").strip()  # "EMBEDDING_LOOKUP: EMBEDDING_..."
            unsupported[op] = "; ".join(x for x in (unsupported.get(op), reason) if x)
        elif reading:
            reading = False
    return unsupported, gpu, cpu, adapter


def place(worker: GpuWorker, path: Path, key: str = "gpu") -> tuple[Placement, dict[str, Any]]:
    """Compile `path` for the GPU alone (see the module docstring: CPU in the set hides
    fallbacks); the compiled model stays in the worker under `key`. (placement, the reply)"""
    reply = worker.request(("compile", key, str(path), "gpu", False), COMPILE_TIMEOUT_S)
    unsupported, gpu, cpu, adapter = parse_log(reply.get("log", ""))
    return Placement(bool(reply["ok"]), reply.get("fully_accelerated"), unsupported, gpu, cpu,
                     adapter, round(float(reply.get("seconds", 0.0)), 3),
                     "" if reply["ok"] else str(reply.get("error", ""))), reply


def compile_fallback(worker: GpuWorker, path: Path) -> dict[str, Any]:
    """GPU with CPU fallback, as an app that allows it runs a graph the GPU does not take
    whole (key "gpu+cpu")."""
    return worker.request(("compile", "gpu+cpu", str(path), "gpu+cpu", False), COMPILE_TIMEOUT_S)


def coverage_entry(p: Placement | None, op_count: int, driver: Driver,
                   why_not: str = "") -> dict[str, Any]:
    """The shared coverage schema's `litert-gpu` entry from the accelerator itself."""
    from mobilegen.targets.coverage import entry, verdict_of

    if p is None:
        return entry("litert-gpu", TOOL, "unknown", None, op_count, (),
                     f"the GPU accelerator was not run: {why_not or driver.reason}")
    where = f"on {p.adapter or driver.describe()}"
    extra = {"driver": driver.describe(), "adapter": p.adapter, "compile_s": p.seconds,
             "asked": "GPU alone (with CPU in the set the accelerator reports full even "
                      "where ops fall back)"}
    if p.compiled and p.fully_accelerated:
        return entry("litert-gpu", TOOL, "full", op_count, op_count, [],
                     f"compiled whole for the GPU {where}; is_fully_accelerated() = True",
                     **extra)
    if p.unsupported or p.gpu_ops is not None:
        gpu = p.gpu_ops if p.gpu_ops is not None else 0
        total = gpu + (p.cpu_ops or 0) if p.gpu_ops is not None else op_count
        reasons = "; ".join(f"{op}: {why}" if why else op for op, why in
                            sorted(p.unsupported.items()))
        return entry("litert-gpu", TOOL, verdict_of(gpu, total), gpu, total, p.unsupported,
                     f"the GPU rejects {reasons} ({p.cpu_ops} op(s) would fall back to the CPU) "
                     f"{where}", reasons=p.unsupported, **extra)
    return entry("litert-gpu", TOOL, "none", 0, op_count, (),
                 f"the GPU accelerator could not compile this model {where}: "
                 f"{_first(p.error)}", **extra)


def _first(text: str) -> str:
    lines = [x.strip(" └") for x in text.strip().splitlines() if x.strip(" └")]
    useful = [x for x in lines if not x.startswith("ERROR: [")]
    return (useful or lines or ["no message"])[-1][:300]


# ---------------------------------------------------------------- precision


def precision_probe(worker: GpuWorker, path: Path, key: str, accelerators: str,
                    feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Which precision the default compile (`key`, enforce_f32 False) computed in: the same
    feeds through a second compile with enforce_f32 True; identical outputs: f32."""
    reply = worker.request(("compile", "f32", str(path), accelerators, True), COMPILE_TIMEOUT_S)
    if not reply["ok"]:
        return {"precision": "unknown", "how": f"the enforce_f32 compile failed: "
                                               f"{_first(str(reply.get('error')))}"}
    default = worker.request(("run", key, feeds))["output"]
    f32 = worker.request(("run", "f32", feeds))["output"]
    worker.request(("drop", "f32"))
    diff = float(np.abs(default.astype(np.float64) - f32).max())
    scale = float(np.abs(f32).max())
    same = bool(np.array_equal(default, f32))
    how = ("outputs with GpuOptions(enforce_f32=False) (the default, what phones run in fp16) "
           "and enforce_f32=True are bit-identical on the same inputs")
    if not same:
        how = (f"enforce_f32=False differs from enforce_f32=True by max abs {diff:.3g} (outputs "
               f"up to {scale:.3g}): the default compile used fp16")
    return {"precision": "f32" if same else "f16", "how": how, "max_abs_f16_vs_f32": diff}


# ---------------------------------------------------------------- the export-time check


@dataclass
class GpuCheck:
    """An artifact's GPU facts: its coverage entry and what goes in its details."""

    coverage: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ran_f32_only(self) -> bool:
        return self.details.get("precision", {}).get("precision") != "f16"


def check(path: Path, op_count: int, feeds: dict[str, np.ndarray] | None) -> GpuCheck:
    """Placement (GPU alone) and, with `feeds`, the precision the default compile used. Never
    raises for the accelerator's own failures: the entry says what happened."""
    driver = find_driver()
    if not driver.found:
        return GpuCheck(coverage_entry(None, op_count, driver),
                        {"gpu_run": f"not run: {driver.reason}"})
    try:
        with GpuWorker(driver) as worker:
            placement, _ = place(worker, path)
            details: dict[str, Any] = {"driver": driver.describe(), "adapter": placement.adapter,
                                       "placement": asdict(placement)}
            if feeds is not None:
                key, accel = "gpu", "gpu"
                if not placement.compiled:  # what an app with CPU fallback would run
                    ok = compile_fallback(worker, path)["ok"]
                    key, accel = ("gpu+cpu", "gpu+cpu") if ok else ("", "")
                if key:
                    details["precision"] = precision_probe(worker, path, key, accel, feeds)
    except GpuWorkerError as e:
        return GpuCheck(coverage_entry(None, op_count, driver, str(e)), {"gpu_run": str(e)})
    return GpuCheck(coverage_entry(placement, op_count, driver), details)


# ---------------------------------------------------------------- the runner


class GpuRunner:
    """A .tflite on the GPU accelerator, one call of the file's batch at a time (signature
    inputs args_i, one output): the GPU alone where it takes the whole graph, else GPU + CPU
    fallback (what an app runs; the coverage gate says the graph is not whole). `host_time`
    times calls inside the worker: on SwiftShader that is host CPU time, never device latency."""

    def __init__(self, path: Path, driver: Driver) -> None:
        self.path = Path(path)
        self.worker = GpuWorker(driver)
        try:
            self.placement, reply = place(self.worker, self.path)
            self.key, self.accelerators = "gpu", "GPU"
            if not self.placement.compiled:
                reply = compile_fallback(self.worker, self.path)
                if not reply["ok"]:
                    raise GpuWorkerError(f"{self.path.name}: the GPU accelerator cannot compile "
                                         f"it even with CPU fallback: "
                                         f"{_first(str(reply.get('error')))}")
                self.key, self.accelerators = "gpu+cpu", "GPU + CPU fallback"
        except Exception:
            self.worker.close()
            raise
        self.inputs: dict[str, Any] = reply["inputs"]
        self.software = "swiftshader" in (self.placement.adapter + driver.describe()).lower()
        self.driver = driver

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.worker.request(("run", self.key, feeds))["output"]

    def host_time(self, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> list[float]:
        return list(self.worker.request(("time", self.key, feeds, warmup, runs))["ms"])

    def describe(self) -> dict[str, Any]:
        return {"accelerators": self.accelerators, "adapter": self.placement.adapter,
                "driver": self.driver.describe(), "compile_s": self.placement.seconds}

    def close(self) -> None:
        self.worker.close()
