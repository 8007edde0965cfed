"""Datasets: readers for each ``--data`` kind (``readers``) and the split, cached dataset (``dataset``)."""
