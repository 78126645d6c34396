"""The child process that runs LiteRT's GPU accelerator (targets/litert_gpu.py starts it).

Why a child: the accelerator's C++ (Dawn, the Vulkan driver) can abort or hang, which must fail one
artifact, not the export; and its placement report ("Following operations are not supported by GPU
delegate: ...", "N operations will run on the GPU, and the remaining M operations will run on the
CPU.") is written only to file descriptor 2, which the child captures around each compile.

Protocol on stdin/stdout: frames of an 8-byte little-endian length and a pickle (parent and child
are the same installed mobilegen; nothing else writes to this pipe: fd 1 is pointed at fd 2 so
native prints cannot corrupt it). Requests are tuples, replies dicts with "ok" and "error".
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import tempfile
import time
import traceback
from typing import Any, BinaryIO

import numpy as np

SIGNATURE = "serving_default"


def read_frame(f: BinaryIO) -> Any:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(f.read(n))


def write_frame(f: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


class Compiled:
    """One CompiledModel with its buffers, created once and reused for every call."""

    def __init__(self, path: str, accelerators: str, enforce_f32: bool) -> None:
        from ai_edge_litert.compiled_model import (
            CompiledModel,
            GpuOptions,
            HardwareAccelerator,
            Options,
        )

        accel = HardwareAccelerator.GPU
        if accelerators == "gpu+cpu":
            accel |= HardwareAccelerator.CPU
        self.model = CompiledModel.from_file(path, options=Options(
            hardware_accelerators=accel, gpu_options=GpuOptions(enforce_f32=enforce_f32)))
        self.inputs = self.model.get_input_tensor_details(SIGNATURE)
        self.outputs = self.model.get_output_tensor_details(SIGNATURE)
        self.in_buf = {k: self.model.create_input_buffer_by_name(SIGNATURE, k)
                       for k in self.inputs}
        self.out_buf = {k: self.model.create_output_buffer_by_name(SIGNATURE, k)
                        for k in self.outputs}
        self.out_name = next(iter(self.outputs))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for k, v in feeds.items():
            self.in_buf[k].write(np.ascontiguousarray(v))
        self.model.run_by_name(SIGNATURE, self.in_buf, self.out_buf)
        d = self.outputs[self.out_name]
        shape = [int(s) for s in d["shape"]]
        return self.out_buf[self.out_name].read(int(np.prod(shape)), np.dtype(d["dtype"])
                                                ).reshape(shape)


def _captured_stderr(fn: Any) -> tuple[Any, Exception | None, str]:
    """fn() with fd 2 captured (and replayed to the real fd 2 afterwards, for the toolchain
    log): the accelerator writes its placement report there. (result, its exception, text)"""
    sys.stderr.flush()
    saved = os.dup(2)
    result, error = None, None
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        except Exception as e:  # returned with the log: the refusal's reason is in both
            error = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            os.write(2, text.encode())
    return result, error, text


def handle(models: dict[str, Compiled], req: tuple[Any, ...]) -> dict[str, Any]:
    op = req[0]
    if op == "compile":
        _, key, path, accelerators, enforce_f32 = req
        t0 = time.perf_counter()
        model, error, log = _captured_stderr(lambda: Compiled(path, accelerators, enforce_f32))
        if error is not None or model is None:  # a refusal is a result: the log says why
            return {"ok": False, "error": str(error), "log": log,
                    "seconds": time.perf_counter() - t0}
        models[key] = model
        return {"ok": True, "log": log, "seconds": time.perf_counter() - t0,
                "fully_accelerated": model.model.is_fully_accelerated(),
                "inputs": model.inputs, "outputs": model.outputs}
    if op == "run":
        _, key, feeds = req
        return {"ok": True, "output": models[key].run(feeds)}
    if op == "time":  # run + read back, as an app waits for its result; ms per call
        _, key, feeds, warmup, runs = req
        m = models[key]
        for _ in range(warmup):
            m.run(feeds)
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            m.run(feeds)
            ms.append((time.perf_counter() - t0) * 1e3)
        return {"ok": True, "ms": ms}
    if op == "drop":
        models.pop(req[1], None)
        return {"ok": True}
    return {"ok": False, "error": f"unknown request {op!r}"}


def main() -> int:
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # native prints to stdout go to stderr, never into the protocol
    proto_in = sys.stdin.buffer
    models: dict[str, Compiled] = {}
    while True:
        req = read_frame(proto_in)
        if req is None or req[0] == "close":
            return 0
        try:
            reply = handle(models, req)
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}",
                     "trace": traceback.format_exc(limit=3)}
        write_frame(proto_out, reply)


if __name__ == "__main__":
    sys.exit(main())
