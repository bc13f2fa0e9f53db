"""ASV benchmarks of the PyTorch adapter (:func:`repsim.compare_models`), next to the
two costs it cannot avoid: the forward passes and the float32 grams ``X X^T`` of the
hooked layers (the gram floor).

``track_metric_over_floor`` records the time of repsim's own work (the gram hooks and
``MinibatchCKA.update_grams``) over the floor's ``X X^T`` timed on the same tensors right
after it -- the paired figure that ``benchmarks/compare_peers.py`` reports at full size
(subtracting a separately timed forward pass is too noisy at this size).
"""

import time

import torch  # asv.conf.json installs repsim with its torch extra
from torch import nn

import repsim


def _setup(depth, n, batches):
    torch.manual_seed(0)
    model = repsim.models.cifar_resnet(depth).eval()
    g = torch.Generator().manual_seed(1)
    loader = [torch.randn(n, 3, 32, 32, generator=g) for _ in range(batches)]
    names = [k for k, m in model.named_modules() if k and not isinstance(m, nn.Sequential)]
    return model, loader, names


class CompareModels:
    """A CIFAR ResNet against itself on every module output (the paper's protocol)."""

    params = ([8, 20], [64], ["float32", "bfloat16"])
    param_names = ["depth", "n", "precision"]
    timeout = 600

    def setup(self, depth, n, precision):
        self.model, self.loader, self.names = _setup(depth, n, batches=2)
        self.precision = precision
        import warnings

        warnings.simplefilter("ignore", repsim.PrecisionWarning)  # timed where it is slower too
        repsim.compare_models(self.model, None, self.loader[:1], self.names, progress=False)
        acts = {}
        mods = dict(self.model.named_modules())
        hooks = [mods[k].register_forward_hook(
            lambda m, i, o, k=k: acts.__setitem__(k, o.detach().reshape(o.shape[0], -1)))
            for k in self.names]
        with torch.inference_mode():
            self.model(self.loader[0])
        for h in hooks:
            h.remove()
        self.acts = list(acts.values())

    def _forward(self):
        with torch.inference_mode():
            for x in self.loader:
                self.model(x)

    def _floor(self):
        with torch.inference_mode():
            for _ in self.loader:
                for a in self.acts:
                    a @ a.T

    def _compare(self):
        return repsim.compare_models(self.model, None, self.loader, self.names, progress=False,
                                     precision=self.precision)

    def time_compare_models(self, depth, n, precision):
        self._compare()

    def time_forward(self, depth, n, precision):
        self._forward()

    def time_gram_floor(self, depth, n, precision):
        self._floor()

    def peakmem_compare_models(self, depth, n, precision):
        self._compare()

    def track_metric_over_floor(self, depth, n, precision):
        """repsim's own work (gram hooks + update_grams) over the same ``X X^T`` timed on
        the same tensors right after it (paired, so machine load hits both alike); the
        minimum over 3 runs."""
        from repsim.adapters import torch as adapter
        from repsim.streaming import MinibatchCKA

        clock = {"own": 0.0, "floor": 0.0}
        gram, update = adapter.GramHooks._gram, MinibatchCKA.update_grams

        def timed_gram(hooks, x, name):
            t0 = time.perf_counter()
            out = gram(hooks, x, name)
            t1 = time.perf_counter()
            flat = x.detach().reshape(x.shape[0], -1)
            flat @ flat.T
            clock["floor"] += time.perf_counter() - t1
            clock["own"] += t1 - t0
            return out

        def timed_update(acc, *args, **kwargs):
            t0 = time.perf_counter()
            out = update(acc, *args, **kwargs)
            clock["own"] += time.perf_counter() - t0
            return out

        ratios = []
        adapter.GramHooks._gram, MinibatchCKA.update_grams = timed_gram, timed_update
        try:
            for _ in range(3):
                clock.update(own=0.0, floor=0.0)
                self._compare()
                ratios.append(clock["own"] / clock["floor"])
        finally:
            adapter.GramHooks._gram, MinibatchCKA.update_grams = gram, update
        return min(ratios)

    track_metric_over_floor.unit = "x gram floor"
