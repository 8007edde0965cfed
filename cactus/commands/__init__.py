"""Click commands that are more than a thin wrapper (``run``, ``rule``), imported by cli.py."""
