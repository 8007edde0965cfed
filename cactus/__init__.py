"""cactus: unsupervised meta-learning (CACTUs and a meta-learned unsupervised update rule)."""

import os

# OpenMP threads (faiss, torch) that spin while they wait make a shared or oversubscribed CPU
# several times slower (k-means on 22,000 x 64: 4.7 s spinning vs 1.8 s passive on 2 busy cores).
# Must be set before faiss or torch load their OpenMP runtime; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
