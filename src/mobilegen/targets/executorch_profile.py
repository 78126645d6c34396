"""The ETDump per-op profile of a .pte: the executorch runtime's own event log (XNNPACK's ops by
kind, e.g. "Fully Connected (NC, F32) GEMM", and the portable kernels' calls), read back with
executorch.devtools' Inspector. Host CPU times: where the time goes, not a phone's latency."""

from __future__ import annotations

import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from mobilegen.errors import ExportError, first_line

SETUP_EVENTS = ("Method::init", "Program::load_method")
WRAPPERS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")  # events that hold others


def etdump_profile(path: Path, args: list[Any], runs: int = 5, top: int = 12) -> dict[str, Any]:
    """Run the .pte `runs` times with ETDump on; per op kind: calls per run, median ms per run
    (summed over its calls), share of the profiled time."""
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    from mobilegen.targets.executorch_io import method_args

    try:
        program = Runtime.get().load_program(str(path), enable_etdump=True)
        method = program.load_method("forward")
        args = method_args(method, args)
        for _ in range(runs):
            method.execute(args)
        with tempfile.TemporaryDirectory(prefix="mobilegen-etdump-") as tmp:
            etdump = Path(tmp) / "run.etdp"
            program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "run.debug"))
            frame = Inspector(etdump_path=str(etdump)).to_dataframe()
    except Exception as e:  # the runtime and the inspector raise many types
        raise ExportError(f"{path.name}: ETDump profile failed: {first_line(e)}") from e
    per_kind: dict[str, list[float]] = defaultdict(list)
    calls: dict[str, int] = defaultdict(int)
    for name, raw, delegated in zip(frame["event_name"], frame["raw"], frame["is_delegated_op"],
                                    strict=True):
        if name in SETUP_EVENTS or not len(raw):
            continue
        kind = re.sub(r" #\d+$", "", str(name)) + ("" if delegated else " (portable/runtime)")
        per_kind[kind].append(statistics.median(float(x) for x in raw))
        calls[kind] += 1
    ms = {k: sum(v) for k, v in per_kind.items()}
    wrappers = {k: round(v, 4) for k, v in ms.items() if k.split(" (")[0] in WRAPPERS}
    ops = {k: v for k, v in ms.items() if k not in wrappers}
    total = sum(ops.values()) or 1.0
    rows = sorted(ops, key=lambda k: -ops[k])
    return {"tool": "executorch.runtime ETDump + executorch.devtools.Inspector",
            "runs": runs, "ops_ms_per_run": round(total, 4), "wrapper_ms_per_run": wrappers,
            "ops": [{"op": k, "calls": calls[k], "ms": round(ops[k], 4),
                     "share": round(ops[k] / total, 4)} for k in rows[:top]],
            "note": "host CPU time per event as the Inspector reads it (median over runs), "
                    "summed per op kind; shares are of the ops' sum. The XNNPACK op events sum "
                    "to less than the DELEGATE_CALL that holds them (setup and the delegate's "
                    "own work between ops)"}
