"""One error hierarchy; the CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE = 3


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
