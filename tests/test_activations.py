"""repsim.layer_statistics: per-layer PC1 statistics through forward hooks."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import repsim  # noqa: E402


def test_matches_the_functions_on_captured_activations():
    from repsim.models import cifar_resnet, layer_names

    torch.manual_seed(0)
    net = cifar_resnet(8, in_channels=1).train()
    x = torch.randn(40, 1, 8, 8)
    names = layer_names(net, "relu")
    stats = repsim.layer_statistics(net, x, names, top=4)
    assert net.training  # mode restored
    assert stats["layer"].values.tolist() == names and stats.attrs["n_examples"] == 40
    captured = {}
    net.eval()
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: captured.__setitem__(n, o.detach().flatten(1).numpy())) for n in names]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for name in names:
        a = captured[name].astype(np.float64)
        share = float(repsim.pc_variance_fraction(a, k=1))
        assert float(stats["pc1_share"].sel(layer=name)) == pytest.approx(share, rel=1e-4)
        # scores: the projection on PC1 of the centred activations, up to sign
        c = a - a.mean(0)
        u, s, _ = np.linalg.svd(c, full_matrices=False)
        t = stats["pc1_scores"].sel(layer=name).values
        assert abs(np.dot(t, u[:, 0] * s[0])) / (np.linalg.norm(t) * s[0]) == pytest.approx(1, abs=1e-4)
        dom = stats["dominant"].sel(layer=name).values
        assert dom.tolist() == np.argsort(-np.abs(t), kind="stable")[:4].tolist()


def test_bad_inputs():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    with pytest.raises(ValueError, match="at least 2 examples"):
        repsim.layer_statistics(net, torch.randn(1, 3))
    with pytest.raises(ValueError, match="top must be an integer in \\[1, 5\\]"):
        repsim.layer_statistics(net, torch.randn(5, 3), top=6)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(ValueError, match="'lin' ran more than once"):
        repsim.layer_statistics(Twice(), torch.randn(5, 3), ["lin"], top=2)
