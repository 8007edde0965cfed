"""Which OpenMP wait policy each runtime gets: torch's keeps its default, faiss's waits passively.

torch and faiss each load their own libgomp, which reads ``OMP_WAIT_POLICY`` once, when it loads.
``OMP_DISPLAY_ENV=VERBOSE`` makes every libgomp print its settings to stderr as it loads, in load
order; ``GOMP_SPINCOUNT`` tells the policies apart (0 passive, 300000 the default short spin,
3e10 active).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

IMPORT_TORCH_THEN_FAISS = (
    "import os, cli, cactus, torch; torch.ones(2).sum()\n"
    "from cactus.clustering.partitions import import_faiss; import_faiss()\n"
    "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
)


def spin_counts(code: str, **env: str) -> tuple[list[int], str]:
    """Run ``code`` in a fresh interpreter; return each OpenMP runtime's spin count (in load order)
    and what the code printed."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
    )
    return [int(n) for n in re.findall(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)], done.stdout.strip()


def test_torch_keeps_its_default_spin_and_faiss_waits_passively():
    counts, policy_after = spin_counts(IMPORT_TORCH_THEN_FAISS)
    assert counts == [300000, 0]  # torch's runtime first, then faiss's
    assert policy_after == "unset"  # the variable was set for faiss's import only


def test_faiss_loaded_first_does_not_make_torch_passive():
    counts, _ = spin_counts("from cactus.clustering.partitions import import_faiss; import_faiss()\n"
                            "import torch; torch.ones(2)")
    assert counts == [0, 300000]


def test_the_users_own_policy_wins_for_both():
    counts, policy_after = spin_counts(IMPORT_TORCH_THEN_FAISS, OMP_WAIT_POLICY="ACTIVE")
    assert len(counts) == 2 and all(n > 300000 for n in counts)
    assert policy_after == "ACTIVE"
