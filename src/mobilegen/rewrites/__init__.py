"""Target-specific model rewrites applied before capture (chosen by a target profile)."""
