"""Meta-learners: Prototypical Networks and MAML on the conv net of :mod:`cactus.nets`, and their training loop."""
