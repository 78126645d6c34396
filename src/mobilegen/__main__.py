"""`python -m mobilegen` is the `mobilegen` command (batch exports run children this way)."""

from mobilegen.cli.main import main

main()
