"""The layering of ARCHITECTURE.md holds: imports only go downward, and every package is in a layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_linter_contracts_are_kept(tmp_path):
    """Run in a subprocess: import-linter reconfigures logging, which would silence cactus's logger here."""
    pytest.importorskip("importlinter")
    probe = ("import sys; from importlinter.cli import lint_imports; "
             f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, cache_dir={str(tmp_path)!r}, "
             "no_logo=True))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_module_of_cactus_sits_in_a_layer():
    """A new package or top-level module must be placed in the layers contract, or it escapes the check."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {f"cactus.{p.name}" for p in (REPO / "cactus").iterdir() if (p / "__init__.py").is_file()}
    modules |= {f"cactus.{p.stem}" for p in (REPO / "cactus").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set()
    assert "embeddings" in named


def test_cli_entry_point_is_thin():
    """cli.py only re-exports the click group; the commands live in cactus/cli/."""
    source = (REPO / "cli.py").read_text()
    code = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code) <= 6, code
    import cli
    from cactus.cli.app import main

    assert cli.main is main
