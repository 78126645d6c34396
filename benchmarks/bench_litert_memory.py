"""Where LiteRT's conversion (litert-torch, targets/tflite.py) holds memory: the RSS of the
process at each phase of `litert_torch.convert` + `export`, its peak within the phase (sampled
every 20 ms from /proc/self/status), and the torch tensors alive at the phase's end (count and
bytes of their storages: tracemalloc cannot see them), starting from a saved capture as an
isolated export's child does (export/isolated.py).

The model is SD-1.5's UNet with narrower stages (`--widths`, random weights): the same blocks,
so the phases and their ratios to the weight bytes carry over; their absolute size at SD-1.5 is
an extrapolation, labelled as one.

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/bench_litert_memory.py \
        [--widths 160,320,640,640] [--dir /tmp/mg-litert] [--mode current]

--mode: `current` converts as targets/tflite.py does; `release` as it does in a child's last use
of its capture (the weights freed once lowered to MLIR); the others pass litert-torch's options for
large models (MODES). Each row has the conversion's peak, its wall and CPU seconds, the file's
max abs error against the capture at the example and its operators. Rows go to
benchmarks/results/litert_memory.json, keyed by mode.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GB = 1024**3
MODES = {  # litert_torch.convert options besides the current call's (none)
    "lightweight": {"lightweight_conversion": True},
    "lightweight-nofold": {"lightweight_conversion": True, "runtime_constant_folding": False},
}
RESULTS = Path(__file__).resolve().parent / "results" / "litert_memory.json"


def _vmrss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Phases:
    """RSS at each phase's start and end, its peak inside, and live tensors at its end."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _vmrss())

    def mark(self, name: str, start_rss: int) -> None:
        count, nbytes = live_tensors()
        self.rows.append({"phase": name, "rss_start_gb": round(start_rss / GB, 3),
                          "peak_gb": round(max(self.peak, _vmrss()) / GB, 3),
                          "rss_end_gb": round(_vmrss() / GB, 3), "tensors": count,
                          "tensor_gb": round(nbytes / GB, 3)})
        self.peak = 0

    def wrap(self, owner: object, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.mark(f"before {name}", _vmrss())
            start = _vmrss()
            try:
                return inner(*args, **kwargs)
            finally:
                self.mark(name, start)

        setattr(owner, attr, timed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def live_tensors() -> tuple[int, int]:
    """(count, bytes) of the distinct CPU storages over 1 MB that Python still reaches."""
    import torch

    gc.collect()
    seen: dict[int, int] = {}
    for o in gc.get_objects():  # plain tensors only: fake / functional ones own no memory
        if type(o) in (torch.Tensor, torch.nn.Parameter) and o.device.type == "cpu":
            st = o.untyped_storage()
            if st.nbytes() > 1 << 20:
                seen[st.data_ptr()] = st.nbytes()
    return len(seen), sum(seen.values())


def build(widths: list[int], folder: Path) -> Path:
    import torch

    from mobilegen.checkpoints.loader import build_random
    from mobilegen.export.run import capture
    from mobilegen.models.unet import UNetConfig

    path = folder / f"unet-w{widths[0]}.pt2"
    if not path.exists():
        model = build_random("unet", UNetConfig(block_out_channels=tuple(widths))).model.eval()
        example = model.example_inputs(2, seed=0)
        torch.save(example, folder / "example.pt")
        with torch.no_grad():
            np.save(folder / "reference.npy", model(*example).numpy())
        torch.export.save(capture(model, example), str(path))
    return path


def convert(path: Path, mode: str) -> dict:
    import litert_torch
    import torch
    from litert_torch._convert import converter_v2, core, litert_converter
    from litert_torch.backend import export as backend_export

    from mobilegen.targets import tflite

    phases = Phases()
    start = _vmrss()
    example = tuple(torch.load(path.parent / "example.pt"))
    program = torch.export.load(str(path))
    param_bytes = sum(v.numel() * v.element_size() for v in program.state_dict.values())
    reference = np.load(path.parent / "reference.npy")  # made by build(): no forward here
    phases.mark("torch.export.load (the capture)", start)
    phases.wrap(core, "export_torch_signature", "re-export + decompositions")
    phases.wrap(core, "_run_convert_passes", "litert fx passes")
    phases.wrap(backend_export, "exported_program_to_mlir", "lower to MLIR")
    phases.wrap(litert_converter.converter_api_ext, "run_convert_to_tfl_passes", "TFL passes")
    phases.wrap(litert_converter.LazyModelExporter, "to_file", "flatbuffer to file")
    phases.wrap(converter_v2, "convert_signatures_v2", "v2 conversion")
    out = path.parent / f"{mode}.tflite"
    t0, c0 = time.perf_counter(), time.process_time()
    start = _vmrss()
    if mode in ("current", "release"):  # as targets/tflite.py converts (release: a child's
        # last use of its capture, ExportRequest.consume_program)
        tflite._convert(program, example, out, param_bytes, "unet", release=mode == "release")
    else:  # litert-torch's options for large models
        options = MODES[mode]
        module = program.module()
        edge = litert_torch.convert(module, example, **options)
        edge.export(str(out))
        del edge, module
    phases.mark("whole conversion", start)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    phases.close()
    peak = max(r["peak_gb"] for r in phases.rows)
    # parity against the capture at the example, and the file's operators
    runner = tflite.load(out, threads=2)
    feeds = {f"args_{i}": x.numpy() for i, x in enumerate(example)}
    got = runner(feeds)
    want = reference
    ops, _ = tflite.operators(out)
    return {"mode": mode, "param_gb": round(param_bytes / GB, 3), "convert_s": round(seconds, 1),
            "convert_cpu_s": round(cpu, 1), "peak_rss_gb": peak,
            "max_abs_error": float(abs(got - want).max()), "operators": ops,
            "tflite_gb": round(out.stat().st_size / GB, 3), "phases": phases.rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="160,320,640,640")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mg-litert"))
    ap.add_argument("--mode", default="current", choices=["current", "release", *MODES])
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(convert(args.child, args.mode)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    widths = [int(w) for w in args.widths.split(",")]
    path = build(widths, args.dir)  # in this process; the conversion starts fresh, as a child
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--mode", args.mode],
                         capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.exit(f"conversion failed (exit {out.returncode}): "
                 f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    row = {**json.loads(lines[-1]), "widths": widths, "date_utc": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime())}
    doc = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    doc["rows"][args.mode] = row
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    for p in row["phases"]:
        print(f"{p['phase']:36} start {p['rss_start_gb']:6.2f}  peak {p['peak_gb']:6.2f}  end "
              f"{p['rss_end_gb']:6.2f} GB; {p['tensors']:4} tensors {p['tensor_gb']:6.2f} GB")
    print(f"{row['mode']}: {row['param_gb']:.2f} GB fp32 weights, {row['convert_s']:.0f} s")


if __name__ == "__main__":
    main()
