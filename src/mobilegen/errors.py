"""One error hierarchy; the CLI maps each class to a one-line message and an exit code. The exit
codes live here and nowhere else."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # the export (or command) could not produce its result
EXIT_USAGE = 2  # a bad recipe, profile, option or config value
EXIT_GATE = 3  # a quality or latency gate failed; the complete report was written
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM; the previous output folder was left as it was
# batch: the worst code wins, in this order (an export that produced nothing is worse than one
# that missed a gate, although the numbers say otherwise)
SEVERITY = (EXIT_INTERRUPTED, EXIT_ERROR, EXIT_USAGE, EXIT_GATE)


class MobilegenError(Exception):
    """Base class. `str(err)` is the one line the user sees."""

    exit_code = EXIT_ERROR


class RecipeError(MobilegenError):
    """A recipe or target profile that does not validate (names file and key)."""

    exit_code = EXIT_USAGE


class CheckpointError(MobilegenError):
    """A checkpoint that is missing, unreadable, or does not fit its config."""


class ConfigError(MobilegenError):
    """An architecture config with an impossible or unknown value."""

    exit_code = EXIT_USAGE


class OutputError(MobilegenError):
    """The output folder cannot be written where asked."""


class TargetUnavailableError(MobilegenError):
    """A target whose SDK is not installed (names the extra to install)."""


class ExportError(MobilegenError):
    """A runtime's exporter or converter failed."""


class GateFailedError(MobilegenError):
    """A quality or latency gate failed; the report was still written."""

    exit_code = EXIT_GATE


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (or its type): what a one-line error quotes from a
    library that raised something long."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
