"""bench/side_by_side.py without the learn2learn peer: it skips cleanly; its FLOP count."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "side_by_side.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = module
    spec.loader.exec_module(module)
    return module


def test_without_learn2learn_it_skips_and_writes_nothing(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CACTUS_L2L_PEER", raising=False)
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # not importable, even if installed
    out = tmp_path / "r.json"
    assert bench.main(["--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out and not out.exists()


def test_a_peer_path_without_a_venv_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="no learn2learn venv"):
        bench.main(["--peer", str(tmp_path)])


def test_flop_count_from_the_layer_shapes(bench):
    # conv4-64 max-pool, 28x28x1: convs at 28, 14, 7 and 3 pixels a side; 2 FLOPs per multiply-add.
    expected = 2 * 9 * 64 * (1 * 28 * 28 + 64 * (14 * 14 + 7 * 7 + 3 * 3))
    assert bench.forward_flops(64, "pool", None) == expected
    assert bench.forward_flops(64, "pool", 5) == expected + 2 * 64 * 5
    # ProtoNets 5-way 1-shot 15q: 3 F(5 + 75) per task, 8 tasks.
    assert bench.step_gflop("protonets-conv4-64-pool-5w1s") == pytest.approx(8 * 3 * 80 * expected / 1e9)
    # MAML, 1 inner step: 9 F(support) + 3 F(query) per task.
    f = expected + 2 * 64 * 5
    assert bench.step_gflop("maml-conv4-64-pool-5w1s-1step") == pytest.approx(8 * (9 * 5 * f + 3 * 75 * f) / 1e9)
