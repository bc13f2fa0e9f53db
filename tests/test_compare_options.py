"""The option groups of compare_models (CaptureOptions, StatisticsOptions, RunOptions): the
grouped call gives exactly the old flat call's result, the old flat keywords still work for
one release with a DeprecationWarning naming the group, and every bad value is refused
with the group and the field in the message."""

from __future__ import annotations

import dataclasses
import doctest
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import xarray as xr  # noqa: E402
from torch import nn  # noqa: E402

import repsim  # noqa: E402
from repsim import CaptureOptions, GramHooks, RunOptions, StatisticsOptions  # noqa: E402
from repsim.adapters import _compare, _options  # noqa: E402

GROUPS = {"capture": CaptureOptions, "statistics": StatisticsOptions, "run": RunOptions}


class Net(nn.Module):
    """``lin`` runs twice per pass (for ``repeated="index"``); dropout makes
    ``eval_mode=False`` visible (and seeded by ``RunOptions.seed``)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.3)
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.drop(torch.tanh(self.inp(x)))
        return self.out(self.lin(torch.tanh(self.lin(h))))


def first_columns(x):  # module level: portable, so a checkpointed run may use it
    return x[:, :5]


def call_first(model, batch):
    return model(batch[0])


def identity(out):
    return out


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def batches(k=4, n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=g),) for _ in range(k)]


def _cases(net, tmp):
    """(layers, flat keywords, the same options grouped), built afresh for each call."""
    ck = iter(range(100))
    yield (["inp", "lin", "out"],
           lambda: dict(epochs=2, seed=3, groups=2, level=0.8, weighting="batches",
                        repeated="index", transform=first_columns, forward=call_first,
                        eval_mode=False, checkpoint=tmp / f"{next(ck)}.pt",
                        checkpoint_every=1),
           lambda: dict(capture=CaptureOptions(repeated="index", transform=first_columns,
                                               forward=call_first, eval_mode=False),
                        statistics=StatisticsOptions(groups=2, level=0.8,
                                                     weighting="batches"),
                        run=RunOptions(epochs=2, seed=3, checkpoint=tmp / f"{next(ck)}.pt",
                                       checkpoint_every=1)))
    yield (["inp", "lin", "out"],
           lambda: dict(kernel="rbf", threshold=0.5, engine="numpy", repeated="index",
                        select={"inp": identity}, forward=call_first),
           lambda: dict(capture=CaptureOptions(repeated="index", select={"inp": identity},
                                               forward=call_first),
                        statistics=StatisticsOptions(kernel="rbf", threshold=0.5),
                        run=RunOptions(engine="numpy")))
    yield (["inp", "out"],
           lambda: dict(kernel="rbf", sigma={"inp": 1.5, "out": 2.0}, forward=call_first),
           lambda: dict(capture=CaptureOptions(forward=call_first),
                        statistics=StatisticsOptions(kernel="rbf",
                                                     sigma={"inp": 1.5, "out": 2.0})))
    hooks = lambda: GramHooks(net, ["inp", "out"], centred=False)  # noqa: E731
    yield (None,
           lambda: dict(hooks=hooks(), accumulator=repsim.MinibatchCKA(groups=3),
                        forward=call_first, level=0.5),
           lambda: dict(capture=CaptureOptions(hooks=hooks(), forward=call_first),
                        statistics=StatisticsOptions(level=0.5),
                        run=RunOptions(accumulator=repsim.MinibatchCKA(groups=3))))


@pytest.mark.parametrize("case", range(4))
def test_grouped_call_equals_the_flat_call_exactly(net, tmp_path, case):
    layers, flat, grouped = list(_cases(net, tmp_path))[case]
    with pytest.warns(DeprecationWarning):
        old = repsim.compare_models(net, None, batches(), layers, progress=False, **flat())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = repsim.compare_models(net, None, batches(), layers, progress=False, **grouped())
    xr.testing.assert_identical(old, new)  # values, coordinates and attrs, exactly
    values = (lambda r: r["cka"].values) if isinstance(old, xr.Dataset) else (lambda r: r.values)
    np.testing.assert_array_equal(values(old), values(new))
    assert set(old.attrs) == set(new.attrs)
    for key in old.attrs:
        np.testing.assert_array_equal(old.attrs[key], new.attrs[key])
    assert np.isfinite(values(new)).all()


def test_the_options_reach_the_computation(net, tmp_path):
    """Each group's fields arrive where they act (so the equality above is not vacuous)."""
    got = [repsim.compare_models(net, None, batches(), layers, progress=False, **grouped())
           for layers, _, grouped in _cases(net, tmp_path)]
    a = got[0].attrs
    assert (a["epochs"], a["seed"], a["n_groups"], a["level"], a["weighting"]) == \
        (2, 3, 2, 0.8, "batches")
    assert a["n_batches"] == 8 and list(got[0].layer_a.values) == ["inp:0", "lin:0", "lin:1",
                                                                   "out:0"]
    assert (tmp_path / "0.pt").exists()  # the checkpoint
    assert (got[1].attrs["kernel"], got[1].attrs["threshold"]) == ("rbf", 0.5)
    assert list(got[2].attrs["sigma_a"]) == [1.5, 2.0]
    assert got[3].attrs["level"] == 0.5 and got[3].attrs["n_groups"] == 3
    assert list(got[3].layer_a.values) == ["inp", "out"]


def test_flat_pooling_is_the_capture_groups_pooling(net):
    data = batches()
    flat = repsim.compare_models(net, None, data, ["inp", "out"], pooling=first_columns,
                                 capture=CaptureOptions(forward=call_first), progress=False)
    grouped = repsim.compare_models(
        net, None, data, ["inp", "out"], progress=False,
        capture=CaptureOptions(forward=call_first, pooling=first_columns))
    xr.testing.assert_identical(flat, grouped)
    assert flat.attrs["pooling"].endswith("first_columns")
    same = repsim.compare_models(
        net, None, data, ["inp", "out"], pooling=first_columns, progress=False,
        capture=CaptureOptions(forward=call_first, pooling=first_columns))
    xr.testing.assert_identical(same, grouped)
    with pytest.raises(ValueError, match=r"pooling='spatial_mean' contradicts "
                                         r"CaptureOptions.pooling='cls'"):
        repsim.compare_models(net, None, data, pooling="spatial_mean", progress=False,
                              capture=CaptureOptions(pooling="cls"))


FIELDS = [(arg, f.name) for arg, cls in GROUPS.items() for f in dataclasses.fields(cls)
          if f.name != "pooling"]


@pytest.mark.parametrize("arg,name", FIELDS)
def test_every_old_flat_keyword_warns_naming_its_group(net, arg, name):
    data = batches(2)
    want = repsim.compare_models(net, None, data, ["inp"], progress=False,
                                 capture=CaptureOptions(forward=call_first))
    default = next(f.default for f in dataclasses.fields(GROUPS[arg]) if f.name == name)
    extra = {} if arg == "capture" else dict(capture=CaptureOptions(forward=call_first))
    flat = {name: default} if name != "forward" else {name: call_first}
    with pytest.warns(DeprecationWarning) as record:
        got = repsim.compare_models(net, None, data, ["inp"], progress=False, **extra, **flat)
    xr.testing.assert_identical(got, want)
    message = str(record[0].message)
    assert f"compare_models({name}=...) is deprecated" in message
    assert f"pass {arg}=repsim.{GROUPS[arg].__name__}({name}=...) instead" in message
    assert record[0].filename == __file__  # points at the caller's line


def test_flat_keywords_mix_with_other_groups_not_their_own(net):
    data = batches(2)
    with pytest.warns(DeprecationWarning, match=r"statistics=repsim.StatisticsOptions\(groups"):
        res = repsim.compare_models(net, None, data, ["inp"], progress=False, groups=2,
                                    run=RunOptions(epochs=2),
                                    capture=CaptureOptions(forward=call_first))
    assert res.attrs["n_groups"] == 2 and res.attrs["epochs"] == 2
    with pytest.raises(TypeError, match=r"got epochs=\.\.\. beside run=: pass them inside "
                                        r"run=repsim.RunOptions"):
        repsim.compare_models(net, None, data, epochs=2, run=RunOptions(seed=1))


@pytest.mark.parametrize("key,hint", [
    ("epoch", "did you mean 'epochs' (run=repsim.RunOptions(epochs=...))?"),
    ("checkpoint_evry", "did you mean 'checkpoint_every' (run=repsim.RunOptions("),
    ("stats", "did you mean 'statistics'?"),
    ("kernal", "did you mean 'kernel' (statistics=repsim.StatisticsOptions(kernel=...))?"),
    ("zzz", "argument 'zzz'"),
])
def test_unknown_keywords_are_refused_with_the_nearest_name(net, key, hint):
    with pytest.raises(TypeError, match="unexpected keyword argument") as err:
        repsim.compare_models(net, None, batches(2), **{key: 1})
    assert hint in str(err.value)


def test_groups_of_the_wrong_class_are_refused(net):
    with pytest.raises(TypeError, match="run must be a repsim.RunOptions; got dict"):
        repsim.compare_models(net, None, batches(2), run=dict(epochs=2))
    with pytest.raises(TypeError, match="capture must be a repsim.CaptureOptions; got Run"):
        repsim.compare_models(net, None, batches(2), capture=RunOptions())


def _hooks(net):
    return GramHooks(net, ["inp"])


BAD = [
    (CaptureOptions, "select", 3, TypeError, "must be a callable, a dict layer name"),
    (CaptureOptions, "select", {"inp": 3}, TypeError, "must be a callable, a dict"),
    (CaptureOptions, "pooling", "flaten", ValueError, "must be one of 'flatten'.*did you "
                                                      "mean 'flatten'"),
    (CaptureOptions, "repeated", "twice", ValueError, "must be one of 'error', 'index'"),
    (CaptureOptions, "transform", 3, TypeError, r"must be a callable \(n, features\)"),
    (CaptureOptions, "forward", "f", TypeError, r"must be a callable \(model, batch\)"),
    (CaptureOptions, "eval_mode", 1, ValueError, "must be True or False; got 1"),
    (CaptureOptions, "hooks", ["h"], TypeError, "must be a GramHooks"),
    (StatisticsOptions, "kernel", "poly", ValueError, "must be one of 'linear', 'rbf'"),
    (StatisticsOptions, "sigma", -1.0, ValueError, "must be a finite number > 0 or None"),
    (StatisticsOptions, "threshold", 0, ValueError, "must be a finite number > 0; got 0"),
    (StatisticsOptions, "weighting", "pair", ValueError, "must be one of 'pairs', 'batches'; got "
                                                       "'pair'; did you mean 'pairs'"),
    (StatisticsOptions, "groups", 1, ValueError, "must be an integer >= 2; got 1"),
    (StatisticsOptions, "groups", True, ValueError, "must be an integer >= 2; got True"),
    (StatisticsOptions, "level", 1.0, ValueError, "must be a number strictly between 0 "
                                                     "and 1; got 1.0"),
    (RunOptions, "epochs", 0, ValueError, "must be an integer >= 1; got 0"),
    (RunOptions, "seed", -1, ValueError, "must be an integer >= 0; got -1"),
    (RunOptions, "seed", 1.5, ValueError, "must be an integer >= 0; got 1.5"),
    (RunOptions, "checkpoint", 3, TypeError, r"must be a file path \(str or os.PathLike\)"),
    (RunOptions, "checkpoint_every", 0, ValueError, "must be an integer >= 1"),
    (RunOptions, "engine", "fast", ValueError, "must be one of 'auto', 'numpy', 'numba'"),
    (RunOptions, "accumulator", object(), TypeError, "must be a repsim accumulator"),
]


@pytest.mark.parametrize("cls,name,value,error,match", BAD)
def test_a_bad_value_is_refused_naming_group_and_field(net, cls, name, value, error, match):
    with pytest.raises(error, match=f"^{cls.__name__}.{name} {match}"):
        cls(**{name: value})
    if name == "pooling":  # the everyday flat keyword: named as passed
        with pytest.raises(error, match=f"^pooling {match}"):
            repsim.compare_models(net, None, batches(2), pooling=value)
        return
    # the old flat keyword reaches the same check (and names the group to use)
    with pytest.warns(DeprecationWarning), pytest.raises(error, match=f"^{cls.__name__}.{name}"):
        repsim.compare_models(net, None, batches(2), **{name: value})


def test_rules_between_fields_name_the_group(net):
    with pytest.raises(ValueError, match=r"^StatisticsOptions.sigma applies to kernel='rbf'"):
        StatisticsOptions(sigma=2.0)
    with pytest.raises(ValueError, match=r"StatisticsOptions.sigma\['a'\] must be a finite"):
        StatisticsOptions(kernel="rbf", sigma={"a": 0})
    with pytest.raises(ValueError, match="^RunOptions: pass either accumulator or engine"):
        RunOptions(accumulator=repsim.MinibatchCKA(), engine="numpy")
    with pytest.raises(ValueError, match=r"^CaptureOptions: pass either hooks or \['select', "
                                         r"'transform'\]"):
        CaptureOptions(hooks=_hooks(net), select=identity, transform=first_columns)
    # hooks for one model where two are compared
    with pytest.raises(TypeError, match="CaptureOptions.hooks must be a GramHooks for one model "
                                        "or a pair"):
        repsim.compare_models(net, Net(), batches(2), capture=CaptureOptions(hooks=_hooks(net)))


def test_groups_are_frozen_keyword_only_and_canonical():
    run = RunOptions(epochs=np.int64(2), seed=np.uint8(3))
    assert type(run.epochs) is int and type(run.seed) is int  # canonical values stored
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.epochs = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        RunOptions(2)  # type: ignore[misc]
    assert dataclasses.replace(run, epochs=4).epochs == 4
    with pytest.raises(ValueError, match="RunOptions.epochs"):
        dataclasses.replace(run, epochs=0)  # validated again
    stats = StatisticsOptions(kernel="rbf", sigma={1: 2})
    assert stats.sigma == {"1": 2.0}
    assert StatisticsOptions() == StatisticsOptions(level=0.9)


def test_docstring_examples():
    for module in (_options, _compare):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                                 | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__
