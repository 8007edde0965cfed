"""A meta-learned, neuron-local unsupervised update rule (Metz et al., ICLR 2019) and its encoder.

Base model: an MLP ``x^0 -> z^1 -> x^1 -> ... -> x^L`` with ``z^l = BN(x^{l-1} W^l^T)`` (batch norm
without affine parameters, so no biases are needed) and ``x^l = relu(z^l)``. The features are the
last layer's post-activations ``x^L`` (B, width).

Update rule: one small network ``h(.; theta)`` (:class:`UpdateNetwork`) shared by every unit of
every layer, the input pixels included. For each unit it reads, across the batch, the unit's
pre-activation z, post-activation x, and the top-down signal t that the layer above sends through
its feedback weights ``V^{l+1}``; it emits per batch element the unit's error signal delta (sent
further down through ``V^l``), a post-synaptic term c and a pre-synaptic term d. The Hebbian
update is ``dW^l = c^l d^{l-1}^T / B`` (both terms centred over the batch); a lateral term
``-K^l W^l`` (K^l: correlations between
the units of layer l, diagonal removed) keeps units decorrelated. Updates are normalised to the
scale of the weights, rows of W stay unit-norm, and the feedback weights V receive the same
Hebbian term, so they are learned too. The rule keeps per-unit running statistics (an
exponential average of its own pooled hidden state, squashed by tanh) across minibatches.

Inside h, every layer is a 1-D convolution along the batch axis with kernel size 1 plus a
batch-mean pooled term (a Deep-Sets layer): a wider kernel would make the update depend on the
arbitrary order of the minibatch, which kernel size 1 with pooling avoids.

Meta-objective (:func:`meta_objective`): ridge regression from the final features to one-hot
labels, fitted in closed form on a support batch and scored by squared error on a query batch.
The features are centred on the support mean and scaled to unit norm, exactly as the few-shot
ridge readout (``cactus.evaluation.baselines.predict_ridge``) does, with the same ridge strength.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder, as_float_pixels

IN_CHANNELS = 5  # z, x, top-down t, is-input-layer flag, is-top-layer flag
MEMORY_DECAY = 0.9
BN_EPS = 1e-5
RIDGE_ALPHA = 1.0
DEFAULT_RULE = Path(__file__).resolve().parents[1] / "cactus" / "update_rule" / "default_rule.h5"


def _torch():
    import torch

    return torch


# ---------------------------------------------------------------------------------------------
# The update network h(.; theta)
# ---------------------------------------------------------------------------------------------
def make_update_network(hidden: int = 32, blocks: int = 2):
    """Build the shared update network; its parameters are theta."""
    torch = _torch()
    nn = torch.nn

    class UpdateNetwork(nn.Module):
        """h(.; theta): per-unit features (U, B, 5) and memory (U, C) -> signals (U, B, 3), pooled (U, C).

        The three output channels are delta (error sent down), d (pre-synaptic), c (post-synaptic).
        """

        def __init__(self) -> None:
            super().__init__()
            self.hidden, self.blocks = hidden, blocks
            self.inp = nn.Linear(IN_CHANNELS, hidden)
            self.memory = nn.Linear(hidden, hidden, bias=False)
            self.point = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
            self.pool = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(blocks))
            self.head = nn.Linear(hidden, 3)
            self.log_lr = nn.Parameter(torch.tensor(np.log(0.03), dtype=torch.float32))
            self.lateral = nn.Parameter(torch.tensor(1.0, dtype=torch.float32))

        def forward(self, features, memory):
            h = torch.relu(self.inp(features) + self.memory(memory)[:, None, :])
            for point, pool in zip(self.point, self.pool, strict=True):
                h = h + torch.relu(point(h) + pool(h.mean(dim=1, keepdim=True)))
            return self.head(h), h.mean(dim=1)

    return UpdateNetwork()


def theta_state(net) -> dict[str, np.ndarray]:
    """theta as named float32 arrays (what the rule artifact stores under ``theta/``)."""
    return {name: value.detach().cpu().numpy().astype(np.float32) for name, value in net.state_dict().items()}


def load_theta(net, arrays: dict[str, np.ndarray]) -> None:
    """Load arrays from :func:`theta_state` into ``net`` (same hidden/blocks)."""
    torch = _torch()
    expected = net.state_dict()
    if set(arrays) != set(expected) or any(tuple(arrays[k].shape) != tuple(v.shape) for k, v in expected.items()):
        raise CactusError("rule file: theta arrays do not match the update network's shape")
    net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()})


# ---------------------------------------------------------------------------------------------
# The base model and one unsupervised step
# ---------------------------------------------------------------------------------------------
@dataclass
class BaseState:
    """The base MLP and the rule's per-unit memory.

    weights[l]: (n_{l+1}, n_l) forward weights W^{l+1}; feedback[l]: same shape, V^{l+1}.
    memory[l]: (n_l, C) running statistics of the rule for the units of layer l (l = 0 is the input).
    """

    weights: list = field(default_factory=list)
    feedback: list = field(default_factory=list)
    memory: list = field(default_factory=list)

    def detach(self) -> BaseState:
        return BaseState([w.detach() for w in self.weights], [v.detach() for v in self.feedback],
                         [m.detach() for m in self.memory])

    def tensors(self) -> list:
        return [*self.weights, *self.feedback, *self.memory]


def init_base(sizes: list[int], hidden: int, generator, dtype=None) -> BaseState:
    """Random base MLP with layer sizes ``[inputs, width, ..., width]``; unit-norm rows."""
    torch = _torch()
    dtype = dtype or torch.float32
    weights, feedback = [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False):
        weights.append(_unit_rows(torch.randn(n_out, n_in, generator=generator, dtype=dtype)))
        feedback.append(_unit_rows(torch.randn(n_out, n_in, generator=generator, dtype=dtype)))
    memory = [torch.zeros(n, hidden, dtype=dtype) for n in sizes]
    return BaseState(weights, feedback, memory)


def _unit_rows(w):
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _standardise(z, mean=None, var=None):
    """Batch norm without affine parameters over axis 0; batch statistics unless given."""
    if mean is None:
        mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
    return (z - mean) / (var + BN_EPS).sqrt()


def forward(weights: list, x0, stats: list | None = None) -> tuple[list, list]:
    """Base-model forward pass. x0: (B, P) -> (zs, xs) with zs[l], xs[l]: (B, n_{l+1}).

    ``stats`` = [(mean, var), ...] per layer replaces the batch statistics (for inference).
    """
    torch = _torch()
    zs, xs, x = [], [], x0
    for i, w in enumerate(weights):
        pre = x @ w.T
        z = _standardise(pre, *(stats[i] if stats is not None else (None, None)))
        x = torch.relu(z)
        zs.append(z)
        xs.append(x)
    return zs, xs


def _rms_over_batch(t):
    return t / (t.pow(2).mean(dim=0, keepdim=True) + 1e-8).sqrt()


def rule_signals(net, state: BaseState, x0, zs: list, xs: list) -> tuple[list, list, list]:
    """Run h on every unit, top layer first, passing errors down through the feedback weights.

    Returns (post, pre, memory): post[l] (B, n_{l+1}) is c for layer l+1's units, pre[l] (B, n_l) is d
    for layer l's units (l = 0: the inputs), memory[l] (n_l, C) the updated running statistics.
    """
    torch = _torch()
    depth = len(state.weights)
    batch = x0.shape[0]
    zs_all = [_standardise(x0), *zs]  # the input "pre-activation" is the per-pixel standardised input
    xs_all = [x0, *xs]
    post: list = [None] * depth
    pre: list = [None] * depth
    memory: list = [None] * (depth + 1)
    top_down = torch.zeros_like(xs_all[depth])
    for layer in range(depth, -1, -1):
        n = xs_all[layer].shape[1]
        flags = torch.zeros(batch, n, 2, dtype=x0.dtype)
        flags[..., 0] = float(layer == 0)
        flags[..., 1] = float(layer == depth)
        features = torch.cat(
            [zs_all[layer][..., None], xs_all[layer][..., None], _rms_over_batch(top_down)[..., None], flags], -1
        ).transpose(0, 1)  # (n, B, 5): one row per unit
        out, pooled = net(features, state.memory[layer])
        # tanh bounds the running statistics: memory feeds back into h, and an unbounded loop with
        # gain above one made the memory (and then the weights) overflow late in long inner runs.
        memory[layer] = MEMORY_DECAY * state.memory[layer] + (1 - MEMORY_DECAY) * torch.tanh(pooled)
        delta, d, c = out[..., 0].T, out[..., 1].T, out[..., 2].T  # each (B, n)
        if layer > 0:
            post[layer - 1] = c
            top_down = delta @ state.feedback[layer - 1]  # (B, n_{layer-1})
        if layer < depth:
            pre[layer] = d
    return post, pre, memory


def lateral_term(x, w):
    """-K W with K the correlation matrix of the layer's units (B, n) over the batch, diagonal removed."""
    torch = _torch()
    xs = _standardise(x)
    k = xs.T @ xs / x.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    return -k @ w


def _normalised(update, like):
    """Scale an update to the RMS of the weights it changes (normalised updates)."""
    scale = like.pow(2).mean().sqrt()
    return update * scale / (update.pow(2).mean().sqrt() + 1e-8)


def unsupervised_step(net, state: BaseState, x0) -> BaseState:
    """One step of the learned rule on an unlabelled batch x0 (B, P); differentiable w.r.t. theta."""
    torch = _torch()
    zs, xs = forward(state.weights, x0)
    post, pre, memory = rule_signals(net, state, x0, zs, xs)
    lr = torch.exp(net.log_lr)
    batch = x0.shape[0]
    weights, feedback = [], []
    for i, (w, v) in enumerate(zip(state.weights, state.feedback, strict=True)):
        # Centring both terms over the batch removes the component shared by every row, which
        # otherwise drives all units to the same weights (collapse).
        c = post[i] - post[i].mean(dim=0, keepdim=True)
        d = pre[i] - pre[i].mean(dim=0, keepdim=True)
        hebb = c.T @ d / batch  # (n_out, n_in)
        update = _normalised(hebb, w) + net.lateral * _normalised(lateral_term(xs[i], w), w)
        weights.append(_unit_rows(w + lr * update))
        feedback.append(_unit_rows(v + lr * _normalised(hebb, v)))
    return BaseState(weights, feedback, memory)


# ---------------------------------------------------------------------------------------------
# The meta-objective
# ---------------------------------------------------------------------------------------------
def ridge_loss(support, support_onehot, query, query_onehot, alpha: float = RIDGE_ALPHA):
    """Closed-form ridge from features to one-hot labels, fitted on support, squared error on query.

    support (S, D), query (Q, D) features; one-hot targets (S, N), (Q, N). Features are centred on the
    support mean and scaled to unit norm; W = X^T (X X^T + alpha I)^-1 Y. Returns the mean over query
    rows of the summed squared error (a scalar).
    """
    torch = _torch()
    mean = support.mean(dim=0, keepdim=True)
    xs = _unit_norm(support - mean)
    xq = _unit_norm(query - mean)
    gram = xs @ xs.T + alpha * torch.eye(xs.shape[0], dtype=xs.dtype)
    dual = torch.linalg.solve(gram, support_onehot)
    predicted = xq @ (xs.T @ dual)
    return (predicted - query_onehot).pow(2).sum(dim=1).mean()


def _unit_norm(x):
    return x / (x.pow(2).sum(dim=1, keepdim=True) + 1e-12).sqrt()


def meta_objective(weights: list, support, support_labels, query, query_labels, ways: int):
    """Ridge meta-objective on the base model's final features (batch norm over support + query)."""
    torch = _torch()
    _, xs = forward(weights, torch.cat([support, query]))
    features = xs[-1]
    eye = torch.eye(ways, dtype=features.dtype)
    return ridge_loss(features[: len(support)], eye[support_labels], features[len(support):], eye[query_labels])


# ---------------------------------------------------------------------------------------------
# Rule files
# ---------------------------------------------------------------------------------------------
def load_rule(path: str | Path | None = None):
    """Read a rule artifact (default: the shipped one) -> (update network, artifact)."""
    from cactus.core.store import read_artifact

    path = Path(path) if path is not None else DEFAULT_RULE
    if not path.is_file():
        raise CactusError(f"--rule {path}: no such rule file")
    artifact = read_artifact(path, stage="rule")
    net = make_update_network(int(artifact.config["hidden"]), int(artifact.config["blocks"]))
    load_theta(net, artifact.group("theta"))
    return net, artifact


def default_steps(artifact) -> int:
    """Unsupervised steps used when ``--steps`` is not given: the rule's ``default_steps`` attribute
    (chosen on validation characters for the shipped rule) or else its meta-training unroll length."""
    return int(artifact.attrs.get("default_steps", artifact.config["unroll"]))


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False, kw_only=True)
class LearnedRuleEncoder(Encoder):
    """Train a base MLP on unlabelled images with a meta-learned rule; embed with its last layer.

    ``width`` is the width of every hidden layer and so the embedding size; when it is None,
    ``dim`` is used as the width (``dim`` is ignored when ``width`` is given). ``depth`` is the number
    of layers, ``steps`` the number of unsupervised steps (None: :func:`default_steps`; at most 50
    under ``quick``; the rule improves the features fast and then slowly degrades them, so more is
    not better), ``rule`` a rule .h5 from ``cactus rule meta-train`` (None: the shipped rule); the
    rule artifact's key joins the cache key (:meth:`input_keys`), so a changed rule recomputes.
    ``device`` is accepted like every encoder's, but the rule runs on the CPU with ``threads`` threads.
    The rule is neuron-local, so any image size works, but the shipped rule was meta-trained on
    14x14 images: ``--image-size 14`` matches it best.

    Learned: weights_ [(n_{l+1}, n_l) float32], stats_ [(mean, var) per layer] (population batch-norm
    statistics over the fitted images, used by :meth:`transform`), steps_ (the steps actually run).
    """

    name = "learned-rule"

    dim: int = 128
    seed: int = 0
    width: int | None = None
    depth: int = 2
    steps: int | None = None
    rule: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    quick: bool = False

    def width_to_use(self) -> int:
        """``width``, or ``dim`` when it is None: the embedding size."""
        return int(self.width) if self.width is not None else int(self.dim)

    def steps_to_run(self, artifact=None) -> int:
        """``steps``, or the rule's default (:func:`default_steps`) when it is None; at most 50 under ``quick``."""
        if self.steps is not None:
            steps = int(self.steps)
        else:
            steps = default_steps(artifact if artifact is not None else load_rule(self.rule)[1])
        return min(steps, 50) if self.quick else steps

    def input_keys(self) -> list[str]:
        """The rule artifact's key (no key when the file is missing: fit then says so)."""
        from cactus.core.store import read_artifact

        path = Path(self.rule) if self.rule is not None else DEFAULT_RULE
        return [read_artifact(path, stage="rule", arrays=False).key] if path.is_file() else []

    def check_params(self) -> None:
        from embeddings.train_utils import check_options

        check_options(width=self.width_to_use(), depth=self.depth, batch_size=self.batch_size)
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 0):
            raise CactusError(f"--steps {self.steps}: expected a non-negative integer (0 = random initialisation)")
        if self.batch_size < 2:
            raise CactusError(f"--batch-size {self.batch_size}: the rule needs at least 2 images per batch")

    def fit(self, images: np.ndarray) -> LearnedRuleEncoder:
        torch = _torch()
        self.check_params()
        self._remember_input(images)
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        net, artifact = load_rule(self.rule)
        self.steps_ = steps = self.steps_to_run(artifact)
        pixels = as_float_pixels(images)
        generator = torch.Generator().manual_seed(int(self.seed))
        rng = np.random.default_rng(int(self.seed))
        sizes = [pixels.shape[1]] + [self.width_to_use()] * self.depth
        state = init_base(sizes, net.hidden, generator)
        batch = min(self.batch_size, len(pixels))
        from cactus.core.progress import Progress

        with torch.no_grad():
            for _ in Progress(range(steps), total=steps, description="learned-rule"):
                rows = rng.choice(len(pixels), size=batch, replace=False)
                state = unsupervised_step(net, state, torch.as_tensor(pixels[rows]))
        self.weights_ = [w.numpy().astype(np.float32) for w in state.weights]
        self.stats_ = population_stats(self.weights_, pixels)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        torch = _torch()
        self._check_input(images)
        pixels = as_float_pixels(images)
        weights = [torch.as_tensor(w) for w in self.weights_]
        stats = [(torch.as_tensor(m), torch.as_tensor(v)) for m, v in self.stats_]
        out = []
        with torch.no_grad():
            for start in range(0, len(pixels), 4096):
                _, xs = forward(weights, torch.as_tensor(pixels[start:start + 4096]), stats)
                out.append(xs[-1].numpy())
        return np.concatenate(out).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        state = {"input_shape": np.asarray(self.input_shape_, dtype=np.int64)}
        if hasattr(self, "steps_"):  # not known for an encoder restored from an artifact written before it was stored
            state["steps"] = np.asarray(self.steps_, dtype=np.int64)
        for i, (w, (m, v)) in enumerate(zip(self.weights_, self.stats_, strict=True)):
            state[f"layer{i}.weight"] = w
            state[f"layer{i}.bn_mean"] = m
            state[f"layer{i}.bn_var"] = v
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if any(f"layer{i}.weight" not in state for i in range(self.depth)):
            raise CactusError("learned-rule encoder: stored weights do not match --depth")
        self._restore_input_shape(state)
        if "steps" in state:  # artifacts written before steps_ was stored lack it
            self.steps_ = int(state["steps"])
        self.weights_ = [np.asarray(state[f"layer{i}.weight"], dtype=np.float32) for i in range(self.depth)]
        self.stats_ = [(np.asarray(state[f"layer{i}.bn_mean"], dtype=np.float32),
                        np.asarray(state[f"layer{i}.bn_var"], dtype=np.float32)) for i in range(self.depth)]
        if self.weights_[-1].shape[0] != self.width_to_use():
            raise CactusError("learned-rule encoder: stored weights do not match --width")


def population_stats(weights: list[np.ndarray], pixels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batch-norm mean and variance of every layer's pre-activation over all images (N, P)."""
    stats = []
    x = pixels.astype(np.float64)
    for w in weights:
        pre = x @ w.T.astype(np.float64)
        mean, var = pre.mean(axis=0), pre.var(axis=0)
        stats.append((mean.astype(np.float32), var.astype(np.float32)))
        x = np.maximum((pre - mean) / np.sqrt(var + BN_EPS), 0.0)
    return stats
