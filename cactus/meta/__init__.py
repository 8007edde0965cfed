"""Meta-learners: Prototypical Networks and MAML on the conv net of :mod:`cactus.meta.nets`."""
