"""Meta-training of the learned unsupervised update rule (Metz et al., ICLR 2019).

``config.py`` the options; ``sampling.py`` inner-run pools, batches and few-shot tasks;
``train.py`` truncated backpropagation through unrolled unsupervised training, with checkpoints.
The rule itself (base MLP, update network, meta-objective) lives in ``embeddings/learned_rule.py``.
"""
