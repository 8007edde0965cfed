"""Foundation: errors, logging, the artifact store and atomic writes, locks, devices, checkpoints.

Imports nothing else from cactus; every other layer may import it.
"""
