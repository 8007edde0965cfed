"""Few-shot evaluation building blocks: embedding baselines and Lake et al.'s one-shot runs."""
