"""The command line: one module per command, shared option declarations and output in ``options`` / ``output``.

The top-level ``cli.py`` only re-exports :func:`cactus.cli.app.main` (the console script).
"""
