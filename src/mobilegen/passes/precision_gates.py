"""Quality gates for reduced-precision artifacts.

The recipe's [gates] are written for fp32 artifacts (parity to ~1e-6). An fp16 or int8 artifact
cannot meet those by design, so its rows are gated by limits of their own: each precision pass has
documented default tolerances (below), and a recipe table may override any of them, e.g.
`{name = "int8", mode = "static", min_psnr_db = 20}`. The recipe's `max_latency_ms` applies to
every row as written.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PrecisionGateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None = the precision's documented default (DEFAULT_LIMITS); set a number to override.
    min_psnr_db: float | None = None  # end-to-end image PSNR vs fp32 PyTorch, same seed
    min_step_psnr_db: float | None = None  # worst single-step output PSNR
    min_cosine: float | None = None  # worst single-step cosine
    max_abs_error: float | None = None  # worst single-step max abs error (no default)

    def limits(self, tag: str) -> dict[str, float | None]:
        base = dict(DEFAULT_LIMITS.get(tag, DEFAULT_LIMITS["int8-static"]))
        for key in ("min_psnr_db", "min_step_psnr_db", "min_cosine", "max_abs_error"):
            if getattr(self, key) is not None:
                base[key] = getattr(self, key)
        return base


# Documented tolerances, per precision tag: floors a working conversion clears with margin, from
# the measurements of issue 12 (benchmarks/bench_passes.py on the trained digits STOIC, guidance 4:
# image PSNR fp16 ~60+ dB, weight-only/dynamic int8 ~40-45 dB, static W8A16 ~44 dB, static W8A8
# ~35 dB). Image PSNR at guidance 4 is far harsher than per-step PSNR; recipes may raise these
# (Apple's W8A8 tool refuses a conversion below 35 dB).
DEFAULT_LIMITS: dict[str, dict[str, float | None]] = {
    "fp16": {"min_psnr_db": 35.0, "min_step_psnr_db": 40.0, "min_cosine": 0.9999,
             "max_abs_error": None},
    "int8-weight_only": {"min_psnr_db": 30.0, "min_step_psnr_db": 30.0, "min_cosine": 0.999,
                         "max_abs_error": None},
    "int8-dynamic": {"min_psnr_db": 25.0, "min_step_psnr_db": 25.0, "min_cosine": 0.995,
                     "max_abs_error": None},
    "int8-static": {"min_psnr_db": 25.0, "min_step_psnr_db": 25.0, "min_cosine": 0.99,
                    "max_abs_error": None},
    "int8-static-a16": {"min_psnr_db": 30.0, "min_step_psnr_db": 35.0, "min_cosine": 0.999,
                        "max_abs_error": None},
}
