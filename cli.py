"""The ``cactus`` console script: the click group lives in :mod:`cactus.cli.app`."""

from cactus.cli.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
