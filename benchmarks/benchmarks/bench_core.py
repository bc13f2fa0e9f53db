"""ASV benchmarks of the CKA core, each next to the gram floor it is measured against.

The floor is the time of the float32 grams ``X X^T`` alone for the same data: every CKA
needs them, so ``time_minibatch_cka / time_gram_floor`` is the overhead of everything else
(centring, packing, the pairing product). ``python benchmarks/core_ratios.py`` prints those
ratios measured side by side in one process.
"""

import numpy as np

import repsim

try:
    import torch
except ImportError:  # the numpy benchmarks still run
    torch = None


def _layers(n_layers, n, p, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, p), dtype=np.float32) for _ in range(n_layers)]


class CKA:
    """Single-pair CKA for small and large n and p, both estimators."""

    params = (["100x10", "1000x64", "2000x2048"], ["biased", "unbiased"], ["linear", "rbf"])
    param_names = ["n_p", "estimator", "kernel"]

    def setup(self, n_p, estimator, kernel):
        n, p = map(int, n_p.split("x"))
        self.x, self.y = _layers(2, n, p)
        repsim.cka(self.x[:8], self.y[:8], kernel=kernel, estimator=estimator)  # numba compile

    def time_cka(self, n_p, estimator, kernel):
        repsim.cka(self.x, self.y, kernel=kernel, estimator=estimator)

    def time_gram_floor(self, n_p, estimator, kernel):
        self.x @ self.x.T
        self.y @ self.y.T


class CKAMatrix:
    """All pairs of 16 layers, full data."""

    params = [["500x256", "1000x1024"]]
    param_names = ["n_p"]

    def setup(self, n_p):
        n, p = map(int, n_p.split("x"))
        self.layers = _layers(16, n, p)
        repsim.cka_matrix([x[:8] for x in self.layers[:2]], estimator="unbiased")  # numba compile

    def time_cka_matrix(self, n_p):
        repsim.cka_matrix(self.layers, estimator="unbiased")

    def time_gram_floor(self, n_p):
        for x in self.layers:
            x @ x.T


class MinibatchAllPairs:
    """The issue's workload: 64 layers x 4 batches of n=256, p=4096, float32."""

    params = [["numpy", "torch"]]
    param_names = ["library"]
    n_layers, n_batches, n, p = 64, 4, 256, 4096
    timeout = 600

    def setup(self, library):
        layers = _layers(self.n_layers, self.n, self.p)
        if library == "torch":
            if torch is None:
                raise NotImplementedError("torch not installed")  # ASV skips the benchmark
            layers = [torch.from_numpy(x) for x in layers]
        self.batch = {f"layer{i}": x for i, x in enumerate(layers)}
        repsim.MinibatchCKA().update([x[:8] for x in layers[:2]])  # numba compile

    def time_minibatch_cka(self, library):
        acc = repsim.MinibatchCKA()
        for _ in range(self.n_batches):
            acc.update(self.batch)
        acc.compute()

    def time_gram_floor(self, library):
        for _ in range(self.n_batches):
            for x in self.batch.values():
                x @ x.T

    def peakmem_minibatch_cka(self, library):
        acc = repsim.MinibatchCKA()
        for _ in range(self.n_batches):
            acc.update(self.batch)
        acc.compute()


def _real_layers(kind, n, seed=0):
    """Float32 ``(n, features)`` activations of real layers: a CIFAR ResNet-20's post-ReLU,
    post-BN and residual-sum outputs (large column means against their spread, unlike the
    Gaussian layers above), or a random BERT-style encoder's hidden states (16 tokens,
    flattened). Random weights, random inputs, fixed seeds."""
    from torch import nn

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    acts = {}
    if kind == "resnet":
        model = repsim.models.cifar_resnet(20).eval()
        kinds = (nn.ReLU, nn.BatchNorm2d, type(model.stage1[0]))
        names = [k for k, m in model.named_modules() if isinstance(m, kinds)]
        x = torch.randn(n, 3, 32, 32, generator=g)
    else:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=64)
        model = BertModel(cfg).eval()
        names = repsim.hidden_state_layers(model)
        x = torch.randint(1000, cfg.vocab_size, (n, 16), generator=g)
    mods = dict(model.named_modules())
    hooks = [mods[k].register_forward_hook(
        lambda m, i, o, k=k: acts.__setitem__(
            k, (o[0] if isinstance(o, tuple) else o).detach().reshape(n, -1).float().clone()))
        for k in names]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return {k: acts[k] for k in names}


class RealActivations:
    """Minibatch CKA over real activations (2 batches of n=128), per precision mode, next
    to the float32 gram floor of the same layers: ``track_over_floor`` is the ratio that
    regressed to 2.2x on post-ReLU layers while the Gaussian benchmarks stayed at 1.1x.
    (n=256, the paper's batch, is ``benchmarks/core_ratios.py``'s; here the size keeps CI's
    quick pass short, bfloat16 being several times slower on CPUs without its units.)"""

    params = (["resnet", "transformer"], ["float32", "bfloat16"])
    param_names = ["data", "precision"]
    n, n_batches = 128, 2
    timeout = 600

    def setup(self, data, precision):
        if torch is None:
            raise NotImplementedError("torch not installed")
        self.batch = _real_layers(data, self.n)
        repsim.MinibatchCKA().update({k: v[:8] for k, v in list(self.batch.items())[:2]})

    def _run(self, precision):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bfloat16 without the units warns; timed anyway
            acc = repsim.MinibatchCKA(precision=precision)
            for _ in range(self.n_batches):
                acc.update(self.batch)
            return acc.compute()

    def _floor(self):
        for _ in range(self.n_batches):
            for x in self.batch.values():
                x @ x.T

    def time_minibatch_cka(self, data, precision):
        self._run(precision)

    def time_gram_floor(self, data, precision):
        self._floor()

    def track_over_floor(self, data, precision):
        """repsim's time over the float32 floor's, interleaved, minimum of 3 ratios."""
        import time

        ratios = []
        for _ in range(3):
            t0 = time.perf_counter()
            self._run(precision)
            t1 = time.perf_counter()
            self._floor()
            ratios.append((t1 - t0) / (time.perf_counter() - t1))
        return min(ratios)

    track_over_floor.unit = "x gram floor"
