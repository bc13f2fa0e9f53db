"""The PyTorch adapter: layer selection, hooks, compare_models, resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import repsim  # noqa: E402
from repsim.adapters.torch import (  # noqa: E402
    CaptureOptions,
    GramHooks,
    RunOptions,
    StatisticsOptions,
    compare_models,
    select_layers,
)
from repsim import _backend as B  # noqa: E402
from repsim.kernels import column_means  # noqa: E402


def grouped(**flat):
    """compare_models keywords with each option group's fields moved into its group
    (for the tables of options below; direct calls spell the groups out)."""
    out = {}
    for arg, cls in (("capture", CaptureOptions), ("statistics", StatisticsOptions),
                     ("run", RunOptions)):
        mine = {k: flat.pop(k) for k in [f.name for f in dataclasses.fields(cls)]
                if k in flat and k != "pooling"}
        if mine:
            out[arg] = cls(**mine)
    return {**flat, **out}


# --------------------------------------------------------------------------- models
class SmallCNN(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6), nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 5))

    def forward(self, x):
        return self.head(self.features(x))


class TupleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        h = self.lin(x)
        return h, h.sum()


@dataclasses.dataclass
class Out:
    hidden: torch.Tensor
    logits: torch.Tensor


class DataclassLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        h = self.lin(x)
        return Out(hidden=h, logits=2 * h + 1)


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleLayer()
        self.dc = DataclassLayer()

    def forward(self, x):
        h, _ = self.block(x)
        return self.dc(torch.tanh(h)).logits


class Shared(nn.Module):
    """Applies the same layer twice (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.lin(torch.tanh(self.lin(x))))


class KwargsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, pixel_values, scale=1.0):
        return self.lin(pixel_values) * scale


def images(n_batches=3, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 8, 8, generator=g) for _ in range(n_batches)]


def reference(batches, fns, fns_b=None):
    """Minibatch CKA from float64 activations computed without hooks."""
    acc = repsim.MinibatchCKA()
    for x in batches:
        xa = {k: f(x).double().reshape(x.shape[0], -1).numpy() for k, f in fns.items()}
        xb = None if fns_b is None else {
            k: f(x).double().reshape(x.shape[0], -1).numpy() for k, f in fns_b.items()}
        acc.update(xa, xb)
    return acc.compute()


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


# --------------------------------------------------------------------------- selection
def test_select_by_name_glob_type_and_order(cnn):
    assert select_layers(cnn, "features.2") == ["features.2"]
    # * stays within a dotted component, ** crosses dots
    assert select_layers(cnn, "*") == ["features", "head"]
    assert select_layers(cnn, "features.*") == [f"features.{i}" for i in range(5)]
    assert select_layers(cnn, "**") == [n for n, _ in cnn.named_modules() if n]
    assert select_layers(cnn, "features.[02]") == ["features.0", "features.2"]
    assert select_layers(cnn, nn.Conv2d) == ["features.0", "features.2"]
    assert select_layers(cnn, (nn.ReLU, nn.Linear)) == ["features.1", "features.4", "head.1"]
    # a list keeps its order and drops repeats
    assert select_layers(cnn, ["head.1", nn.Conv2d, "features.0"]) == [
        "head.1", "features.0", "features.2"]
    # default: every leaf module
    assert select_layers(cnn) == [f"features.{i}" for i in range(5)] + ["head.0", "head.1"]


def test_select_errors(cnn):
    with pytest.raises(ValueError, match=r"'features.9' is not a module.*did you mean"):
        select_layers(cnn, "features.9")
    with pytest.raises(ValueError, match="matches no module"):
        select_layers(cnn, "blocks.*")
    with pytest.raises(ValueError, match="matches no module"):
        select_layers(cnn, nn.LSTM)
    with pytest.raises(TypeError, match="layers must be"):
        select_layers(cnn, [3])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        select_layers("not a model")


def test_dataparallel_prefixes_are_unwrapped(cnn):
    wrapped = nn.DataParallel(cnn)  # on a CPU-only machine it just calls the module
    assert select_layers(wrapped, "module.features.0") == ["features.0"]
    assert select_layers(wrapped, ["module.features.*"])[:2] == ["features.0", "features.1"]
    data = images()
    got = compare_models(wrapped, None, data, ["module.features.0", "module.head.1"],
                         progress=False)
    want = compare_models(cnn, None, data, ["features.0", "head.1"], progress=False)
    assert list(got.layer_a.values) == ["features.0", "head.1"]
    np.testing.assert_array_equal(got.values, want.values)


# --------------------------------------------------------------------------- hooks
def test_hooks_form_grams_and_are_removed(cnn):
    x = images(1)[0]
    with GramHooks(cnn, [nn.Conv2d]) as hooks:
        assert hooks.active
        with torch.no_grad():
            cnn(x)
        grams = hooks.grams
    assert not hooks.active
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())
    with torch.no_grad():
        a = cnn.features[0](x).reshape(16, -1)
    # the gram of the centred features (issue 11.1: means accumulated in float64)
    a = a - column_means(a, B.namespace(a)).float()
    want = (a @ a.T).numpy()
    np.testing.assert_allclose(grams["features.0"].numpy(), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    assert list(grams) == ["features.0", "features.2"]


def test_hooks_removed_after_an_exception(cnn):
    class Boom(Exception):
        pass

    def explode(module, inputs, output):
        raise Boom

    handle = cnn.head[1].register_forward_hook(explode)
    cnn.train()
    cnn.features[3].eval()  # a mixed training state must come back as it was
    with pytest.raises(Boom):
        compare_models(cnn, None, images(), "**", progress=False)
    handle.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())
    assert cnn.training and cnn.features[0].training and not cnn.features[3].training


def test_inplace_relu_cannot_corrupt_the_capture():
    torch.manual_seed(1)
    net = SmallCNN(inplace=True).eval()
    data = images()
    got = compare_models(net, None, data, ["features.0", "features.1", "features.3"],
                         progress=False)
    f0 = net.features[0]
    want = reference(data, {
        # the conv output before the in-place ReLU overwrote it
        "features.0": lambda x: f0(x).detach(),
        "features.1": lambda x: torch.relu(f0(x)).detach(),
        "features.3": lambda x: net.features[:4](x).detach(),
    })
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    assert got.sel(layer_a="features.0", layer_b="features.1") < 0.999  # not the same


def test_tuple_and_dataclass_outputs():
    torch.manual_seed(2)
    net = TupleNet().eval()
    data = [torch.randn(12, 6) for _ in range(3)]
    # tuple output: the first element by default
    got = compare_models(net, None, data, ["block"], progress=False)
    assert got.shape == (1, 1) and float(got[0, 0]) == pytest.approx(1.0)
    # a dataclass needs select=
    with pytest.raises(TypeError, match="pass select="):
        compare_models(net, None, data, ["dc"], progress=False)
    got = compare_models(net, None, data, ["block", "dc"], progress=False,
                         capture=CaptureOptions(select={"dc": lambda out: out.hidden}))
    lin = net.block.lin

    want = reference(data, {"block": lambda x: lin(x).detach(),
                            "dc": lambda x: net.dc.lin(torch.tanh(lin(x))).detach()})
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)


def test_module_called_twice_is_refused_or_indexed():
    torch.manual_seed(3)
    net = Shared().eval()
    data = [torch.randn(10, 5) for _ in range(3)]
    with pytest.raises(ValueError, match=r"'lin' ran more than once.*repeated='index'"):
        compare_models(net, None, data, ["lin", "out"], progress=False)
    assert all(not m._forward_hooks for m in net.modules())
    got = compare_models(net, None, data, ["lin", "out"], progress=False,
                         capture=CaptureOptions(repeated="index"))
    assert list(got.layer_a.values) == ["lin:0", "lin:1", "out:0"]
    want = reference(data, {
        "lin:0": lambda x: net.lin(x).detach(),
        "lin:1": lambda x: net.lin(torch.tanh(net.lin(x))).detach(),
        "out:0": lambda x: net(x).detach(),
    })
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)


def test_pooling_policies(cnn):
    data = images()
    got = compare_models(cnn, None, data, ["features.0", "features.2"], pooling="spatial_mean",
                         progress=False)
    want = reference(data, {"features.0": lambda x: cnn.features[0](x).mean((2, 3)).detach(),
                            "features.2": lambda x: cnn.features[:3](x).mean((2, 3)).detach()})
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    seq = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    tokens = [torch.randn(8, 5, 4) for _ in range(2)]
    for pooling, f in (("token_mean", lambda h: h.mean(1)), ("first_token", lambda h: h[:, 0])):
        got = compare_models(seq, None, tokens, ["0", "1"], pooling=pooling, progress=False)
        want = reference(tokens, {"0": lambda x: f(seq[0](x)).detach(),
                                  "1": lambda x: f(seq(x)).detach()})
        np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    with pytest.raises(ValueError, match=r"pooling='token_mean' needs.*'features.0' gave shape"):
        compare_models(cnn, None, data, ["features.0"], pooling="token_mean", progress=False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        compare_models(cnn, None, data, pooling="max", progress=False)


# --------------------------------------------------------------------------- compare_models
def test_single_batch_agrees_with_cka_matrix(cnn):
    x = images(1, n=24)
    got = compare_models(cnn, None, x, "**", progress=False)
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.detach().clone()))
             for n, m in cnn.named_modules() if n]
    with torch.no_grad():
        cnn(x[0])
    for h in hooks:
        h.remove()
    order = [n for n, _ in cnn.named_modules() if n]
    want = repsim.cka_matrix({k: acts[k].double().numpy() for k in order},
                             estimator="unbiased")
    assert list(got.layer_a.values) == list(want.layer_a.values)
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)


def test_two_models_batch_formats_and_attrs(cnn):
    torch.manual_seed(4)
    other = SmallCNN().eval()
    data = images(4, n=12)
    labels = [torch.arange(12) for _ in data]
    got = compare_models(cnn, other, list(zip(data, labels)), nn.Conv2d, ["features.4", "head.1"],
                         progress=False, names=("a", "b"))
    want = reference(
        data,
        {"features.0": lambda x: cnn.features[0](x).detach(),
         "features.2": lambda x: cnn.features[:3](x).detach()},
        {"features.4": lambda x: other.features(x).detach(),
         "head.1": lambda x: other(x).detach()},
    )
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    assert got.attrs["model_a"] == "a" and got.attrs["model_b"] == "b"
    assert got.attrs["n_batches"] == 4 and got.attrs["n_examples"] == 48
    assert got.attrs["estimator"] == "unbiased" and got.attrs["within_model"] == 0
    assert got.attrs["epochs"] == 1 and got.attrs["seed"] == 0
    # a tensor loader gives the same as (input, target) pairs
    same = compare_models(cnn, other, data, nn.Conv2d, ["features.4", "head.1"], progress=False)
    np.testing.assert_array_equal(same.values, got.values)
    # dict batches are keyword arguments
    net = KwargsNet().eval()
    batches = [{"pixel_values": torch.randn(9, 4), "scale": 2.0} for _ in range(2)]
    r = compare_models(net, None, batches, ["lin"], progress=False)
    assert float(r[0, 0]) == pytest.approx(1.0)


def test_within_model_different_layer_sets(cnn):
    data = images()
    full = compare_models(cnn, None, data, "**", progress=False)
    part = compare_models(cnn, cnn, data, ["features.0", "head.1"], ["features.2"],
                          progress=False)
    assert part.shape == (2, 1)
    np.testing.assert_allclose(
        part.values, full.sel(layer_a=["features.0", "head.1"], layer_b=["features.2"]).values,
        rtol=1e-12)


def test_epochs_seed_and_training_state():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 3))
    net.train()
    ds = torch.utils.data.TensorDataset(torch.randn(40, 6))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng_state = torch.get_rng_state()
    a = compare_models(net, None, loader, run=RunOptions(epochs=2, seed=7), progress=False)
    b = compare_models(net, None, loader, run=RunOptions(epochs=2, seed=7), progress=False)
    c = compare_models(net, None, loader, run=RunOptions(epochs=2, seed=8), progress=False)
    np.testing.assert_array_equal(a.values, b.values)  # same seed, same shuffles
    assert not np.allclose(a.values, c.values)
    assert a.attrs["n_batches"] == 10 and a.attrs["n_examples"] == 80
    assert net.training  # restored
    assert torch.equal(torch.get_rng_state(), rng_state)  # caller's RNG untouched
    for k, v in net.state_dict().items():  # eval mode: BN running stats not updated
        assert torch.equal(v, before[k]), k


def test_bad_input_is_named(cnn):
    data = images()
    with pytest.raises(ValueError, match="needs at least 4 examples"):
        compare_models(cnn, None, [torch.randn(3, 3, 8, 8)], progress=False)
    bad = [d.clone() for d in data]
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'features.0'.*NaN"):
        compare_models(cnn, None, bad, ["features.0"], progress=False)
    with pytest.raises(ValueError, match="estimator must be one of"):
        compare_models(cnn, None, data, estimator="fast", progress=False)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        compare_models(cnn, None, data, run=RunOptions(epochs=0), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        compare_models(cnn, None, [], progress=False)
    with pytest.raises(TypeError, match="loader batches must be"):
        compare_models(cnn, None, ["text"], progress=False)
    with pytest.raises(ValueError, match="one-shot generator"):
        compare_models(cnn, None, (d for d in data), run=RunOptions(epochs=2), progress=False)
    with pytest.raises(ValueError, match="no batches in epoch 1"):
        compare_models(cnn, None, _Epochs([data, []]), run=RunOptions(epochs=2),
                       progress=False)


def test_constant_layer_is_nan_with_warning():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.zero_()
    with pytest.warns(repsim._validation.DegenerateRepresentationWarning, match="'1'"):
        r = compare_models(net, None, [torch.randn(8, 4) for _ in range(2)], progress=False)
    assert np.isnan(r.sel(layer_a="1").values).all()
    assert float(r.sel(layer_a="0", layer_b="0")) == pytest.approx(1.0)


def test_progress_bar_runs(cnn, capsys):
    r = compare_models(cnn, None, images(2), ["features.0"], progress=True)
    assert float(r[0, 0]) == pytest.approx(1.0)
    err = capsys.readouterr().err  # pytest's stderr is not a terminal: one plain line
    assert err.startswith("compare_models: 2/2 batch in ") and err.count("\n") == 1
    r = compare_models(cnn, None, images(2), ["features.0"], progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- resume
class Interrupted(Exception):
    pass


def interrupt_after(batches, k):
    for i, b in enumerate(batches):
        if i == k:
            raise Interrupted
        yield b


def test_resume_after_interruption_is_identical(cnn, tmp_path):
    data = images(7, n=8)
    ckpt = tmp_path / "run" / "state.pt"
    opts = dict(layers_a="**", progress=False,
                run=RunOptions(epochs=2, checkpoint=ckpt, checkpoint_every=2))
    full = compare_models(cnn, None, data, "**", run=RunOptions(epochs=2), progress=False)
    with pytest.raises(Interrupted):  # dies in epoch 0 at batch 5: batches 0-3 saved
        compare_models(cnn, None, _Epochs([interrupt_after(data, 5)]), **opts)
    assert ckpt.exists()
    with pytest.raises(Interrupted):  # resumes at batch 4, then dies in epoch 1 at batch 3
        compare_models(cnn, None, _Epochs([data, interrupt_after(data, 3)]), **opts)
    resumed = compare_models(cnn, None, data, **opts)
    np.testing.assert_array_equal(resumed.values, full.values)
    assert resumed.attrs["n_batches"] == 14
    # a finished checkpoint returns the result without running the model again
    again = compare_models(cnn, None, _Epochs([]), **opts)
    np.testing.assert_array_equal(again.values, full.values)
    # a checkpoint of another comparison is refused
    with pytest.raises(ValueError, match=r"different comparison.*estimator"):
        compare_models(cnn, None, data, **dict(opts, estimator="biased"))
    assert not list(ckpt.parent.glob("*.tmp"))


class _Epochs:
    """A loader whose successive iterations yield different lists (None: interrupt)."""

    def __init__(self, epochs):
        self.epochs = list(epochs)

    def __iter__(self):
        if not self.epochs:
            raise AssertionError("the loader should not be iterated")
        e = self.epochs.pop(0)
        if e is None:
            raise Interrupted
        return iter(e)


def test_groups_give_intervals_and_resume_exactly(cnn, tmp_path):
    data = images(6, n=8)
    plain = compare_models(cnn, None, data, ["features.0", "head.1"], progress=False)
    ds = compare_models(cnn, None, data, ["features.0", "head.1"], progress=False,
                        statistics=StatisticsOptions(groups=3))
    np.testing.assert_array_equal(ds["cka"].values, plain.values)
    assert set(ds.data_vars) >= {"cka", "stderr", "ci_low", "ci_high"}
    off = ds["stderr"].sel(layer_a="features.0", layer_b="head.1")
    assert float(off) > 0 and ds.attrs["n_groups"] == 3
    # the same groups after an interruption
    ckpt = tmp_path / "g.pt"
    opts = dict(layers_a=["features.0", "head.1"], progress=False,
                statistics=StatisticsOptions(groups=3),
                run=RunOptions(checkpoint=ckpt, checkpoint_every=2))
    with pytest.raises(Interrupted):
        compare_models(cnn, None, interrupt_after(data, 3), **opts)
    resumed = compare_models(cnn, None, data, **opts)
    for name in ("cka", "stderr", "ci_low", "ci_high"):
        np.testing.assert_array_equal(resumed[name].values, ds[name].values)


def test_tuple_of_names_is_a_list(cnn):
    assert select_layers(cnn, ("head.1", "features.0")) == ["head.1", "features.0"]


def test_transform_rbf_and_half_precision_match_the_accumulator():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    data = [torch.randn(12, 6) for _ in range(3)]
    layers = ["0", "1", "2"]
    fns = {"0": lambda x: net[0](x), "1": lambda x: net[:2](x), "2": lambda x: net(x)}

    def centre_cols(x):  # a transform acting on each (n, features) batch
        return x - x.mean(0, keepdim=True)

    for kwargs, acc in (
        (dict(transform=lambda x: centre_cols(x)[:, :3]), repsim.MinibatchCKA(
            transform=lambda x: centre_cols(x)[:, :3])),
        (dict(kernel="rbf"), repsim.MinibatchCKA(kernel="rbf")),
        (dict(kernel="rbf", sigma=2.0), repsim.MinibatchCKA(kernel="rbf", sigma=2.0)),
    ):
        got = compare_models(net, None, data, layers, progress=False, **grouped(**kwargs))
        with torch.no_grad():
            for x in data:
                acc.update({k: f(x) for k, f in fns.items()})
        want = acc.compute()
        np.testing.assert_allclose(got.values, want.values, atol=1e-6)
        if "kernel" in kwargs:
            np.testing.assert_allclose(got.attrs["sigma_a"], want.attrs["sigma_a"], rtol=1e-6)
    # bfloat16 outputs are upcast to float32 before the gram
    half = nn.Sequential(nn.Linear(6, 8), nn.Tanh()).to(torch.bfloat16)
    bf = [x.to(torch.bfloat16) for x in data]
    got = compare_models(half, None, bf, ["0", "1"], progress=False)
    with torch.no_grad():
        want = reference(bf, {"0": lambda x: half[0](x).float(), "1": lambda x: half(x).float()})
    np.testing.assert_allclose(got.values, want.values, atol=1e-6)


# --------------------------------------------------------------------------- issue 11 / 16
import functools  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402



def test_exact_name_with_glob_characters_wins():
    net = nn.Module()
    net.blocks = nn.ModuleDict({"a[0]": nn.Linear(2, 2), "a0": nn.Linear(2, 2)})
    assert select_layers(net, "blocks.a[0]") == ["blocks.a[0]"]
    assert select_layers(net, "blocks.a[0-9]") == ["blocks.a0"]  # still a pattern
    assert select_layers(net, "blocks.a?") == ["blocks.a0"]


class Encoder(nn.Module):
    """Compared through ``encode``, not ``forward``; ``lin`` runs twice per pass."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 5)
        self.lin = nn.Linear(5, 5)

    def encode(self, x):
        return self.lin(torch.tanh(self.lin(self.inp(x))))

    def forward(self, x):  # pragma: no cover - never the entry point here
        raise AssertionError("forward must not run")


def test_entry_point_other_than_forward_with_repeated_calls():
    torch.manual_seed(3)
    net = Encoder().eval()
    data = [torch.randn(9, 5) for _ in range(3)]
    enc = lambda m, b: m.encode(b)  # noqa: E731
    by_encode = CaptureOptions(forward=enc)
    got = compare_models(net, None, data, ["inp"], capture=by_encode, progress=False)  # 3 batches
    assert got.attrs["n_batches"] == 3
    with pytest.raises(ValueError, match="ran more than once"):
        compare_models(net, None, data, ["lin"], capture=by_encode, progress=False)
    idx = compare_models(net, None, data, ["inp", "lin"], progress=False,
                         capture=CaptureOptions(forward=enc, repeated="index"))
    assert idx.layer_a.values.tolist() == ["inp:0", "lin:0", "lin:1"]
    with torch.no_grad():
        def acts(x):
            h0 = net.inp(x)
            h1 = net.lin(h0)
            return {"inp:0": h0, "lin:0": h1, "lin:1": net.lin(torch.tanh(h1))}
        want = repsim.MinibatchCKA()
        for x in data:
            want.update({k: v.double() for k, v in acts(x).items()})
    np.testing.assert_allclose(idx.values, want.compute().values, atol=1e-6)


def test_repeated_index_with_other_layers_b():
    torch.manual_seed(4)
    net = Shared().eval()
    data = [torch.randn(8, 5) for _ in range(2)]
    index = CaptureOptions(repeated="index")
    both = compare_models(net, None, data, ["lin", "out"], capture=index, progress=False)
    got = compare_models(net, None, data, ["lin"], ["out"], capture=index, progress=False)
    assert got.layer_a.values.tolist() == ["lin:0", "lin:1"]
    assert got.layer_b.values.tolist() == ["out:0"]
    want = both.sel(layer_a=["lin:0", "lin:1"], layer_b=["out:0"])
    np.testing.assert_allclose(got.values, want.values, atol=1e-12)


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", b"PK\x03\x04trunc"])
def test_unreadable_checkpoint_named_in_repsims_words(cnn, tmp_path, content):
    path = tmp_path / "ck.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot be resumed") as err:
        compare_models(cnn, None, images(2), ["features.0"], progress=False,
                       run=RunOptions(checkpoint=path))
    assert "weights_only" not in str(err.value) and "ck.pt" in str(err.value)
    torch.save({"not": "ours"}, path)
    with pytest.raises(ValueError, match="does not hold a repsim checkpoint"):
        compare_models(cnn, None, images(2), ["features.0"], progress=False,
                       run=RunOptions(checkpoint=path))


def first_columns(x):
    return x[:, :3]


@pytest.mark.parametrize("change,match", [
    (dict(kernel="rbf", sigma=5.0), "sigma: 5.0 here, 2.0 in the state"),
    (dict(kernel="rbf", sigma=2.0, transform=first_columns), "transform"),
    (dict(kernel="rbf", sigma=2.0, select=functools.partial(torch.mul, other=2)), "select"),
    (dict(kernel="rbf", sigma=2.0, weighting="batches"), "weighting"),
    (dict(kernel="rbf", sigma=2.0, threshold=0.5), "threshold"),
    (dict(kernel="rbf", sigma=2.0, pooling="spatial_mean"), "pooling"),
    (dict(kernel="rbf", sigma=2.0, weights=True), "weights_a"),
])
def test_checkpoint_refuses_another_computation(cnn, tmp_path, change, match):
    path = tmp_path / "ck.pt"
    layers = ["features.0", "features.3"]
    opts = dict(progress=False, checkpoint=path, kernel="rbf", sigma=2.0)
    compare_models(cnn, None, images(2), layers, **grouped(**opts))
    change = dict(change)
    if change.pop("weights", False):
        with torch.no_grad():
            cnn.features[0].bias.add_(1e-3)
    with pytest.raises(ValueError, match=f"different comparison.*{match}"):
        compare_models(cnn, None, images(2), layers, **grouped(**dict(opts, **change)))


def test_checkpointed_callables_must_be_portable(cnn, tmp_path):
    opts = dict(progress=False, checkpoint=tmp_path / "ck.pt")
    for kwargs in (dict(transform=lambda x: x), dict(forward=lambda m, b: m(b)),
                   dict(select={"features.0": lambda out: out})):
        with pytest.raises(ValueError, match="could never resume"):
            compare_models(cnn, None, images(2), ["features.0"], **grouped(**opts, **kwargs))
    assert not (tmp_path / "ck.pt").exists()
    # without a checkpoint, lambdas are fine
    compare_models(cnn, None, images(2), ["features.0"], progress=False,
                   capture=CaptureOptions(transform=lambda x: x))


def test_checkpoint_with_callables_resumes_in_a_new_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import functools, sys, torch, numpy as np, repsim\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).eval()\n"
        "g = torch.Generator().manual_seed(1)\n"
        "data = [torch.randn(10, 6, generator=g) for _ in range(3)]\n"
        "loader = data if sys.argv[1] == 'run' else iter(())\n"
        "r = repsim.compare_models(net, None, loader, progress=False,\n"
        "    run=repsim.RunOptions(checkpoint=sys.argv[2]),\n"
        "    capture=repsim.CaptureOptions(\n"
        "        transform=functools.partial(repsim.remove_top_pcs, k=1),\n"
        "        pooling=functools.partial(torch.flatten, start_dim=1)))\n"
        "np.save(sys.argv[3], r.values)\n")
    env = dict(__import__("os").environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               OMP_NUM_THREADS="1")
    ck = tmp_path / "ck.pt"
    for mode, out in (("run", "first.npy"), ("resume", "again.npy")):
        proc = subprocess.run([sys.executable, str(script), mode, str(ck), str(tmp_path / out)],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "again.npy"))


def test_accumulator_options_pass_through(cnn):
    data = images(3, n=10) + images(1, n=6, seed=5)  # ragged
    layers = ["features.0", "features.4", "head.1"]
    fns = {"features.0": cnn.features[0], "features.4": cnn.features, "head.1": cnn}
    for opts in (dict(weighting="batches"), dict(kernel="rbf", threshold=0.5),
                 dict(engine="numpy", estimator="biased")):
        got = compare_models(cnn, None, data, layers, progress=False, **grouped(**opts))
        want = repsim.MinibatchCKA(**opts)
        with torch.no_grad():
            for x in data:
                want.update({k: f(x) for k, f in fns.items()})
        np.testing.assert_allclose(got.values, want.compute().values, atol=1e-6)
        for key, value in opts.items():
            assert got.attrs.get(key, value) == value
        if opts.get("kernel"):
            assert got.attrs["threshold"] == 0.5
            np.testing.assert_allclose(got.attrs["sigma_a"], want.compute().attrs["sigma_a"],
                                       rtol=1e-6)
    batches = compare_models(cnn, None, data, layers, progress=False,
                             statistics=StatisticsOptions(weighting="batches"))
    pairs = compare_models(cnn, None, data, layers, progress=False)
    assert np.abs(batches.values - pairs.values).max() > 1e-6


def test_built_hooks_and_accumulator(cnn):
    data = images(2)
    plain = compare_models(cnn, None, data, ["features.0", "features.3"], pooling="spatial_mean",
                           progress=False, statistics=StatisticsOptions(groups=2))
    # compare_models builds its own hooks with centred=False (MinibatchCKA centres them)
    hooks = GramHooks(cnn, ["features.0", "features.3"], pooling="spatial_mean", centred=False)
    acc = repsim.MinibatchCKA(groups=2)
    got = compare_models(cnn, None, data, capture=CaptureOptions(hooks=hooks),
                         run=RunOptions(accumulator=acc), progress=False)
    np.testing.assert_array_equal(got["cka"].values, plain["cka"].values)
    assert acc.n_batches == 2
    # hooks that centre each gram themselves (the default) give the same CKA up to rounding
    centred = GramHooks(cnn, ["features.0", "features.3"], pooling="spatial_mean")
    acc = repsim.MinibatchCKA(groups=2)
    got = compare_models(cnn, None, data, capture=CaptureOptions(hooks=centred),
                         run=RunOptions(accumulator=acc), progress=False)
    np.testing.assert_allclose(got["cka"].values, plain["cka"].values, rtol=0, atol=1e-6)
    assert acc.n_batches == 2
    with pytest.raises(ValueError, match="either CaptureOptions.hooks or pooling="):
        compare_models(cnn, None, data, capture=CaptureOptions(hooks=hooks), pooling="cls",
                       progress=False)
    with pytest.raises(ValueError, match="CaptureOptions: pass either hooks or \\['pooling'\\]"):
        CaptureOptions(hooks=hooks, pooling="cls")
    with pytest.raises(ValueError, match="either CaptureOptions.hooks or layers_a/layers_b"):
        compare_models(cnn, None, data, ["features.0"], capture=CaptureOptions(hooks=hooks),
                       progress=False)
    with pytest.raises(ValueError, match=r"either RunOptions.accumulator or "
                                         r"\['StatisticsOptions.groups'\]"):
        compare_models(cnn, None, data, run=RunOptions(accumulator=repsim.MinibatchCKA()),
                       statistics=StatisticsOptions(groups=3), progress=False)
    with pytest.raises(ValueError, match=r"either RunOptions.accumulator or \['estimator'\]"):
        compare_models(cnn, None, data, run=RunOptions(accumulator=repsim.MinibatchCKA()),
                       estimator="biased", progress=False)
    with pytest.raises(ValueError, match="fresh"):
        compare_models(cnn, None, data, run=RunOptions(accumulator=acc), progress=False)
    other = SmallCNN().eval()
    pair = (GramHooks(cnn, ["features.0"]), GramHooks(other, ["head.1"]))
    across = compare_models(cnn, other, data, capture=CaptureOptions(hooks=pair), progress=False)
    assert across.sizes == {"layer_a": 1, "layer_b": 1}


def test_hook_transform_that_changes_n_is_refused(cnn):
    with pytest.raises(ValueError, match="n=16 for layer .features.0.*got shape \\(4, "):
        compare_models(cnn, None, images(1), ["features.0"],
                       capture=CaptureOptions(transform=first_rows),
                       progress=False)


def first_rows(x):
    return x[:4]


def test_warnings_point_at_the_callers_code():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.zero_()
    data = [torch.randn(8, 4) for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare_models(net, None, data, progress=False)
        acc = repsim.MinibatchCKA()
        acc.update({"z": np.zeros((8, 2)), "x": np.random.default_rng(0).standard_normal((8, 2))})
        acc.compute()
    degenerate = [w for w in caught if issubclass(w.category, repsim.DegenerateRepresentationWarning)]
    assert len(degenerate) == 2
    assert all(w.filename == __file__ for w in degenerate), [w.filename for w in degenerate]



# --------------------------------------------------------------------------- padded text
class _TinyEncoder(nn.Module):
    """``(n, tokens) -> (n, tokens, 4)`` through a layer ``enc``; padding positions hold
    ``pad_value`` (a model may leave NaN or Inf there: nothing downstream reads them)."""

    def __init__(self, pad_value=float("nan")):
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.enc = nn.Linear(4, 4)
        self.pad_value = pad_value

    def forward(self, input_ids, attention_mask):
        h = self.enc(self.emb(input_ids))
        return torch.where(attention_mask.bool().unsqueeze(2), h, torch.full_like(h, self.pad_value))


def _text_batches(padded=True, n_batches=3, n=6, t=5):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, 20, (n, t), generator=g)
        mask = torch.ones(n, t, dtype=torch.long)
        if padded:
            for i in range(n):
                mask[i, int(torch.randint(2, t + 1, (1,), generator=g)):] = 0
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def test_flatten_is_refused_on_padded_text_by_default():
    # before: the default pooling='flatten' read padding positions as features, silently
    torch.manual_seed(0)
    model = _TinyEncoder(pad_value=0.0)
    with pytest.raises(ValueError, match=r"pooling='flatten' \(the default\) would read the "
                       r"padding positions of layer 'enc'.*pooling='masked_mean'"):
        compare_models(model, None, _text_batches(), ["enc"], progress=False)
    with pytest.raises(ValueError, match="padding positions of layer 'enc'"):
        compare_models(model, None, _text_batches(), ["enc"], pooling="flatten", progress=False)
    # no padding in the mask: token positions are real features, flatten stays
    res = compare_models(model, None, _text_batches(padded=False), ["enc"], progress=False)
    assert res.attrs["pooling"] == "flatten" and float(res.values[0, 0]) == pytest.approx(1.0)
    res = compare_models(model, None, _text_batches(), ["enc"], pooling="masked_mean",
                         progress=False)
    assert res.attrs["pooling"] == "masked_mean"


@pytest.mark.parametrize("pad_value", [float("nan"), float("inf"), -float("inf")])
def test_masked_mean_ignores_non_finite_padding(pad_value):
    # before: "layer 'enc' contains NaN or Inf" although every real token was finite
    torch.manual_seed(0)
    model = _TinyEncoder(pad_value)
    clean = _TinyEncoder(0.0)
    clean.load_state_dict(model.state_dict())
    for pooling in ("masked_mean", "last_token", "cls", "tokens"):
        res = compare_models(model, clean, _text_batches(), ["enc"], ["enc"], pooling=pooling,
                             progress=False)
        assert float(res.values[0, 0]) == pytest.approx(1.0, abs=1e-6), pooling
    from repsim.adapters.pooling import pool

    x = torch.randn(3, 4, 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    x[mask == 0] = pad_value
    want = torch.stack([x[i][mask[i] == 1].mean(0) for i in range(3)])
    assert torch.equal(pool(x, "masked_mean", "enc", mask=mask), want)
    # a real token that is not finite is still refused downstream, naming the layer
    with pytest.raises(ValueError, match="'enc'.*NaN or Inf"):
        compare_models(_NaNAtReal(pad_value), None, _text_batches(), ["enc"],
                       pooling="masked_mean", progress=False)


class _NaNAtReal(_TinyEncoder):
    """NaN at the first token of every example, which is a real token."""

    def __init__(self, pad_value):
        super().__init__(pad_value)
        self.enc.register_forward_hook(
            lambda module, inputs, out: out.index_fill(1, torch.tensor([0]), float("nan")))
