"""The pipeline stages: each reads its inputs, checks the cache, computes and writes one artifact."""
