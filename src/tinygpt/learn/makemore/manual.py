"""Backprop ninja: the MLP-with-BatchNorm character model, its backward pass written by hand.

The model is Bengio et al. 2003 with BatchNorm after the hidden layer: embed the last
``block_size`` characters, concatenate, one linear layer, BatchNorm, tanh, a linear layer to
the vocabulary, cross-entropy. :func:`forward_steps` breaks that into the smallest steps,
so every intermediate tensor has a gradient; :meth:`ManualMLP.backward` walks them back
one at a time with the chain rule, no autograd; :func:`check_gradients` holds every one
of those gradients against PyTorch's autograd.

Two shortcuts then collapse whole stretches of that walk into one expression each:
:func:`cross_entropy_backward` (softmax minus one-hot) and :func:`batchnorm_backward`.
:meth:`ManualMLP.loss_and_grads` trains with them.

Shapes: B batch rows, T = block_size, E = n_embd, H = n_hidden, V = vocab size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PARAMETER_NAMES = ("C", "W1", "b1", "bngain", "bnbias", "W2", "b2")
# The forward's intermediates, in the order they are computed (backward visits them reversed).
INTERMEDIATE_NAMES = (
    "emb", "embcat", "hprebn", "bnmeani", "bndiff", "bndiff2", "bnvar", "bnvar_inv", "bnraw",
    "hpreact", "h", "logits", "logit_maxes", "norm_logits", "counts", "counts_sum",
    "counts_sum_inv", "probs", "logprobs",
)
# The two shortcuts, each checked against autograd's gradient of the tensor it produces.
SHORTCUT_NAMES = ("logits (cross-entropy shortcut)", "hprebn (batchnorm shortcut)")


def batch_stats(hprebn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of each hidden unit over the batch, both (1, H).

    The variance divides by n-1 (Bessel's correction), as the lecture does. The running
    variance kept for evaluation estimates the variance of the whole data set, where the
    unbiased estimate is the right one; normalizing the training batch by the same estimate
    means training and evaluation divide by the same kind of number. (PyTorch's BatchNorm1d
    normalizes by 1/n in training but keeps the 1/(n-1) estimate for evaluation: a small
    train/test mismatch this model avoids.)
    """
    n = hprebn.shape[0]
    if n < 2:
        raise ValueError(f"BatchNorm over a batch needs at least 2 rows (its variance divides by n-1); "
                         f"got {n}. Use model.eval() to run single examples on the running statistics.")
    mean = hprebn.mean(0, keepdim=True)
    var = ((hprebn - mean) ** 2).sum(0, keepdim=True) / (n - 1)
    return mean, var


def forward_steps(p: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training-mode forward in its smallest steps: (loss, every intermediate by name)."""
    n = X.shape[0]
    emb = p["C"][X]                                   # (B, T, E)
    embcat = emb.view(n, -1)                          # (B, T*E)
    hprebn = embcat @ p["W1"] + p["b1"]               # (B, H)
    bnmeani = hprebn.sum(0, keepdim=True) / n         # (1, H)
    bndiff = hprebn - bnmeani                         # (B, H)
    bndiff2 = bndiff ** 2                             # (B, H)
    bnvar = bndiff2.sum(0, keepdim=True) / (n - 1)    # (1, H), Bessel: see batch_stats
    bnvar_inv = (bnvar + eps) ** -0.5                 # (1, H)
    bnraw = bndiff * bnvar_inv                        # (B, H)
    hpreact = p["bngain"] * bnraw + p["bnbias"]       # (B, H)
    h = torch.tanh(hpreact)                           # (B, H)
    logits = h @ p["W2"] + p["b2"]                    # (B, V)
    # Subtracting each row's max changes no probability but keeps exp() from overflowing.
    logit_maxes = logits.max(1, keepdim=True).values  # (B, 1)
    norm_logits = logits - logit_maxes                # (B, V)
    counts = norm_logits.exp()                        # (B, V)
    counts_sum = counts.sum(1, keepdim=True)          # (B, 1)
    counts_sum_inv = counts_sum ** -1                 # (B, 1)
    probs = counts * counts_sum_inv                   # (B, V)
    logprobs = probs.log()                            # (B, V)
    loss = -logprobs[torch.arange(n), Y].mean()
    cache = dict(zip(INTERMEDIATE_NAMES, (emb, embcat, hprebn, bnmeani, bndiff, bndiff2, bnvar, bnvar_inv, bnraw,
                 hpreact, h, logits, logit_maxes, norm_logits, counts, counts_sum, counts_sum_inv, probs, logprobs)))
    return loss, {**cache, "X": X, "Y": Y}


def cross_entropy_backward(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """d loss / d logits in one expression: (softmax(logits) - onehot(Y)) / n, (B, V).

    Each row's loss is -log p_y; its gradient with respect to logit j is p_j - [j == y].
    Every probability pulls its logit down by how much it holds, the right answer is pushed
    up by 1, and the row's pulls and push sum to zero. The mean over rows divides by n.
    """
    dlogits = F.softmax(logits, 1)
    dlogits[torch.arange(logits.shape[0]), Y] -= 1
    return dlogits / logits.shape[0]


def batchnorm_backward(dhpreact: torch.Tensor, bngain: torch.Tensor, bnvar_inv: torch.Tensor,
                       bnraw: torch.Tensor) -> torch.Tensor:
    """d loss / d hprebn from d loss / d hpreact in one formula, (B, H).

    Per hidden unit, with g = bngain * dhpreact (the gradient reaching bnraw) and
    s = sqrt(var + eps): moving one input x_i moves bnraw_i directly (g_i / s), moves the
    mean, which shifts every bnraw_j (-sum(g) / (n s)), and moves the variance, which
    rescales every bnraw_j; d var / d x_i = 2 (x_i - mean) / (n-1), and following that
    through gives -bnraw_i * sum(g * bnraw) / ((n-1) s). Over the common factor 1/(n s):

        dx = (n g - sum(g) - n/(n-1) * bnraw * sum(g * bnraw)) / (n s)

    The n/(n-1) is Bessel's correction showing through: the mean's term averages over n
    but the variance divides by n-1. With a 1/n variance it would be 1, the textbook form.
    """
    n = dhpreact.shape[0]
    g = bngain * dhpreact
    return bnvar_inv / n * (n * g - g.sum(0) - n / (n - 1) * bnraw * (g * bnraw).sum(0))


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"ManualMLP: {name} must be positive, got {value}")


class ManualMLP:
    """The MLP-with-BatchNorm character model as plain tensors, trained by a hand-written backward.

    No ``nn.Module`` and no autograd: parameters are leaf tensors that do not require grad;
    :meth:`loss_and_grads` fills their ``.grad`` so any torch optimizer can step them.
    """

    def __init__(self, vocab_size: int, block_size: int = 3, n_embd: int = 10, n_hidden: int = 200, *,
                 seed: int = 0, dtype: torch.dtype = torch.float32, momentum: float = 0.01, eps: float = 1e-5):
        _check_positive(vocab_size=vocab_size, block_size=block_size, n_embd=n_embd, n_hidden=n_hidden,
                        momentum=momentum, eps=eps)
        if momentum > 1:
            raise ValueError(f"ManualMLP: momentum is the weight of each new batch in the running "
                             f"statistics, between 0 and 1; got {momentum}")
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = vocab_size, block_size, n_embd, n_hidden
        self.momentum, self.eps, self.training = momentum, eps, True
        g = torch.Generator().manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g, dtype=dtype)

        fan_in = block_size * n_embd
        self.C = randn(vocab_size, n_embd)                            # (V, E)
        # Kaiming: 5/3 is tanh's gain, 1/sqrt(fan_in) keeps the pre-activations at unit scale.
        self.W1 = randn(fan_in, n_hidden) * (5 / 3) / fan_in ** 0.5   # (T*E, H)
        # b1 is useless before BatchNorm (the mean subtracts it away) but kept, as in the
        # lecture, so its gradient (zero up to rounding) is exercised too.
        self.b1 = randn(n_hidden) * 0.1                               # (H,)
        # Small, not zero, output layer: the first losses are near log(V), not confidently wrong.
        self.W2 = randn(n_hidden, vocab_size) * 0.1                   # (H, V)
        self.b2 = randn(vocab_size) * 0.1                             # (V,)
        # Gain near 1 and bias near 0 rather than exactly 1 and 0: exact values could hide a
        # wrong gradient formula that happens to agree at those points.
        self.bngain = randn(1, n_hidden) * 0.1 + 1.0                  # (1, H)
        self.bnbias = randn(1, n_hidden) * 0.1                        # (1, H)
        self.running_mean = torch.zeros(1, n_hidden, dtype=dtype)     # (1, H)
        self.running_var = torch.ones(1, n_hidden, dtype=dtype)       # (1, H)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in PARAMETER_NAMES}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.named_parameters().values())

    def train(self, mode: bool = True) -> ManualMLP:
        self.training = mode
        return self

    def eval(self) -> ManualMLP:
        return self.train(False)

    def _check_batch(self, X: torch.Tensor) -> None:
        if X.dim() != 2 or X.shape[1] != self.block_size:
            raise ValueError(f"ManualMLP: X must be (batch, block_size={self.block_size}) character ids; "
                             f"got shape {tuple(X.shape)}")

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(m * mean)
        self.running_var.mul_(1 - m).add_(m * var)

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """(B, V) logits: batch statistics in training mode (not recorded), running ones in eval mode."""
        self._check_batch(X)
        hprebn = self.C[X].view(X.shape[0], -1) @ self.W1 + self.b1          # (B, H)
        mean, var = batch_stats(hprebn) if self.training else (self.running_mean, self.running_var)
        h = torch.tanh(self.bngain * (hprebn - mean) * (var + self.eps) ** -0.5 + self.bnbias)
        return h @ self.W2 + self.b2                                          # (B, V)

    def forward(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training-mode forward, step by step: (loss, cache of every intermediate plus X and Y).

        Updates the running mean and variance, as every training step does.
        """
        self._check_batch(X)
        loss, cache = forward_steps(self.named_parameters(), X, Y, self.eps)
        self._update_running(cache["bnmeani"], cache["bnvar"])
        return loss, cache

    def backward(self, cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """d loss / d (every intermediate and every parameter), by the chain rule one step at a time.

        Each line is the local derivative of one forward step times the gradient arriving from
        above. A tensor broadcast in the forward (a (1, H) row used by all B rows) sums its
        gradient over the broadcast dimension; a sum in the forward copies the gradient back.
        The weights are read from the model, so call this before an optimizer changes them.
        """
        c = cache
        X, Y, n = c["X"], c["Y"], c["X"].shape[0]
        d: dict[str, torch.Tensor] = {}
        # loss = -mean of the picked log-probabilities: each picked one gets -1/n, the rest 0.
        d["logprobs"] = torch.zeros_like(c["logprobs"])
        d["logprobs"][torch.arange(n), Y] = -1.0 / n
        d["probs"] = d["logprobs"] / c["probs"]                                  # d log(x) = 1/x
        # probs = counts * counts_sum_inv: counts_sum_inv (B, 1) was broadcast over V columns.
        d["counts_sum_inv"] = (c["counts"] * d["probs"]).sum(1, keepdim=True)
        d["counts_sum"] = -c["counts_sum"] ** -2 * d["counts_sum_inv"]           # d x^-1 = -x^-2
        # counts reach the loss twice: directly in probs and through counts_sum (which copies back).
        d["counts"] = c["counts_sum_inv"] * d["probs"] + d["counts_sum"]
        d["norm_logits"] = c["counts"] * d["counts"]                             # d exp(x) = exp(x)
        # logit_maxes is ~0 up to rounding: the max shift does not change the probabilities.
        d["logit_maxes"] = -d["norm_logits"].sum(1, keepdim=True)
        # logits reach norm_logits directly and through the max, which picks one column per row.
        argmax = F.one_hot(c["logits"].max(1).indices, self.vocab_size).to(c["logits"].dtype)
        d["logits"] = d["norm_logits"] + argmax * d["logit_maxes"]
        self._linear_backward(d, c, "h", "logits", "W2", "b2")
        d["hpreact"] = (1.0 - c["h"] ** 2) * d["h"]                              # d tanh = 1 - tanh^2
        d["bngain"] = (c["bnraw"] * d["hpreact"]).sum(0, keepdim=True)
        d["bnbias"] = d["hpreact"].sum(0, keepdim=True)
        d["bnraw"] = self.bngain * d["hpreact"]
        d["bnvar_inv"] = (c["bndiff"] * d["bnraw"]).sum(0, keepdim=True)
        d["bnvar"] = -0.5 * (c["bnvar"] + self.eps) ** -1.5 * d["bnvar_inv"]
        d["bndiff2"] = torch.ones_like(c["bndiff2"]) / (n - 1) * d["bnvar"]      # the sum copies back
        # bndiff reaches the loss through bnraw and through its square.
        d["bndiff"] = c["bnvar_inv"] * d["bnraw"] + 2 * c["bndiff"] * d["bndiff2"]
        d["bnmeani"] = -d["bndiff"].sum(0, keepdim=True)
        # hprebn reaches the loss directly and through the mean, which spreads 1/n back to each row.
        d["hprebn"] = d["bndiff"] + torch.ones_like(c["hprebn"]) / n * d["bnmeani"]
        self._linear_backward(d, c, "embcat", "hprebn", "W1", "b1")
        d["emb"] = d["embcat"].view(c["emb"].shape)                              # (B, T, E)
        d["C"] = self._embedding_backward(X, d["emb"])
        return d

    def _linear_backward(self, d: dict[str, torch.Tensor], c: dict[str, torch.Tensor],
                         x: str, y: str, w: str, b: str) -> None:
        """For y = x @ w + b: dx = dy @ w.T, dw = x.T @ dy, db = dy summed over the broadcast batch."""
        d[x] = d[y] @ getattr(self, w).T
        d[w] = c[x].T @ d[y]
        d[b] = d[y].sum(0)

    def _embedding_backward(self, X: torch.Tensor, demb: torch.Tensor) -> torch.Tensor:
        """dC, (V, E): each row of C collects the gradient of every place it was looked up."""
        return torch.zeros_like(self.C).index_add_(0, X.reshape(-1), demb.reshape(-1, self.n_embd))

    def loss_and_grads(self, X: torch.Tensor, Y: torch.Tensor) -> float:
        """One training step's forward and the fast backward (the two shortcuts); returns the loss.

        Writes (overwrites, does not accumulate) ``.grad`` of every parameter and updates the
        running statistics. Only the tensors the shortcuts need are kept, so this forward is
        the plain one, not :func:`forward_steps`.
        """
        self._check_batch(X)
        n = X.shape[0]
        embcat = self.C[X].view(n, -1)                              # (B, T*E)
        hprebn = embcat @ self.W1 + self.b1                         # (B, H)
        mean, var = batch_stats(hprebn)                             # (1, H) each
        self._update_running(mean, var)
        bnvar_inv = (var + self.eps) ** -0.5                        # (1, H)
        bnraw = (hprebn - mean) * bnvar_inv                         # (B, H)
        h = torch.tanh(self.bngain * bnraw + self.bnbias)           # (B, H)
        logits = h @ self.W2 + self.b2                              # (B, V)
        loss = F.cross_entropy(logits, Y)

        c = {"embcat": embcat, "h": h}
        d = {"logits": cross_entropy_backward(logits, Y)}
        self._linear_backward(d, c, "h", "logits", "W2", "b2")
        dhpreact = (1.0 - h ** 2) * d["h"]                          # (B, H)
        d["bngain"] = (bnraw * dhpreact).sum(0, keepdim=True)
        d["bnbias"] = dhpreact.sum(0, keepdim=True)
        d["hprebn"] = batchnorm_backward(dhpreact, self.bngain, bnvar_inv, bnraw)
        self._linear_backward(d, c, "embcat", "hprebn", "W1", "b1")
        d["C"] = self._embedding_backward(X, d["embcat"].view(n, self.block_size, self.n_embd))
        for name, p in self.named_parameters().items():
            p.grad = d[name]
        return loss.item()


def check_gradients(model: ManualMLP, X: torch.Tensor, Y: torch.Tensor) -> dict[str, float]:
    """Max abs difference from autograd of every hand-written gradient, by name.

    Autograd runs the same :func:`forward_steps` on requires-grad copies of the parameters,
    keeping the gradient of every intermediate (``retain_grad``). Names: every intermediate,
    every parameter, and the two shortcuts (:data:`SHORTCUT_NAMES`). The model is left as it
    was: its running statistics are not updated.
    """
    model._check_batch(X)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters().items()}
    loss, cache = forward_steps(params, X, Y, model.eps)
    for name in INTERMEDIATE_NAMES:
        cache[name].retain_grad()
    loss.backward()
    autograd = {**{k: cache[k].grad for k in INTERMEDIATE_NAMES}, **{k: v.grad for k, v in params.items()}}

    plain = {k: v.detach() for k, v in cache.items()}
    ours = model.backward(plain)
    ours[SHORTCUT_NAMES[0]] = cross_entropy_backward(plain["logits"], Y)
    ours[SHORTCUT_NAMES[1]] = batchnorm_backward(ours["hpreact"], model.bngain, plain["bnvar_inv"], plain["bnraw"])
    autograd[SHORTCUT_NAMES[0]], autograd[SHORTCUT_NAMES[1]] = autograd["logits"], autograd["hprebn"]
    return {name: (ours[name] - autograd[name]).abs().max().item() for name in autograd}
