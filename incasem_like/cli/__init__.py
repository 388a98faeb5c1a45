"""The `incasem-like` command line: one module per command group in commands/."""
