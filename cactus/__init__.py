"""cactus: unsupervised meta-learning (CACTUs and a meta-learned unsupervised update rule)."""

__version__ = "0.1.0"
