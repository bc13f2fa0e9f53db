"""FeatureMoments: streamed moments give every pair's full-data value (issue 14, item 1)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from repsim import _moment_formulas as F
from repsim import moments as MM
from repsim._registry import families

#: the functions with an exact streaming form -> symmetric, from the measure registry
MEASURES = {name: f.symmetric for name, f in families().items() if f.moments is not None}

ROOT = Path(__file__).resolve().parents[1]
RAGGED = [0, 37, 38, 101, 180, 213]  # a one-example batch and a ragged last one


def layers(rng, n=213, offset=0.0):
    """Four layers of different widths with shared structure and offsets."""
    base = rng.standard_normal((n, 6))
    return {
        "a": base @ rng.standard_normal((6, 7)) + offset + rng.standard_normal((n, 7)),
        "b": np.tanh(base[:, :4]) @ rng.standard_normal((4, 5)) - offset
        + 0.3 * rng.standard_normal((n, 5)),
        "c": rng.standard_normal((n, 3, 2)) * 4.0 + 3 * offset,
        "d": base[:, :2] ** 2 + 0.1 * rng.standard_normal((n, 2)),
    }


def feed(acc, acts, bounds=RAGGED, other=None):
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = {k: v[lo:hi] for k, v in acts.items()}
        acc.update(part, None if other is None else {k: v[lo:hi] for k, v in other.items()})
    return acc


FULL = [  # (measure, params, the full-data function, is it a distance near 0 on the diagonal)
    ("cka", {}, lambda x, y: repsim.cka(x, y), False),
    ("cka", {"estimator": "unbiased"}, lambda x, y: repsim.cka(x, y, estimator="unbiased"), False),
    ("cca", {}, lambda x, y: repsim.cca(x, y), False),
    ("cca", {"summary": "mean_squared"}, lambda x, y: repsim.cca(x, y, summary="mean_squared"), False),
    ("svcca", {"keep": 0.9}, lambda x, y: repsim.svcca(x, y, keep=0.9), False),
    ("svcca", {"keep": (2, 3)}, lambda x, y: repsim.svcca(x, y, keep=(2, 3)), False),
    ("pwcca", {}, lambda x, y: repsim.pwcca(x, y), False),
    ("pwcca", {"side": "y"}, lambda x, y: repsim.pwcca(x, y, side="y"), False),
    ("pwcca", {"side": "smaller"}, lambda x, y: repsim.pwcca(x, y, side="smaller"), False),
    ("shape_distance", {}, lambda x, y: repsim.shape_distance(x, y), True),
    ("shape_distance", {"alpha": 0.0}, lambda x, y: repsim.shape_distance(x, y, 0.0), True),
    ("shape_distance", {"alpha": 0.4, "score": "euclidean"},
     lambda x, y: repsim.shape_distance(x, y, 0.4, "euclidean"), True),
    ("nbs", {}, lambda x, y: repsim.nbs(x, y), False),
    # the measure's name: its preset ridge (the function's default is 0, "linear_r2")
    ("ridge_r2", {}, lambda x, y: repsim.compare(x, y, "ridge_r2"), False),
    ("ridge_r2", {"ridge": 0.3, "direction": "y_to_x"},
     lambda x, y: repsim.ridge_r2(x, y, 0.3, direction="y_to_x"), False),
    ("ridge_r2", {"ridge": 0.1, "direction": "mean"},
     lambda x, y: repsim.ridge_r2(x, y, 0.1, direction="mean"), False),
    ("gulp", {}, lambda x, y: repsim.gulp(x, y), True),
    ("gulp", {"ridge": 0.5, "squared": True}, lambda x, y: repsim.gulp(x, y, 0.5, squared=True),
     True),
]


def expected(acts_a, acts_b, fn):
    return np.array([[float(fn(x, y)) for y in acts_b.values()] for x in acts_a.values()])


def assert_matches(result, want, distance, atol=0.0):
    """1e-9 relative; a distance between identical layers is the sqrt (arccos) of rounding
    on both sides (up to ~1e-4 for float32 data with large offsets), so there both need
    only be that small."""
    got = np.asarray(result.values)
    if distance:
        zero = np.abs(want) < 1e-3
        assert np.all(np.abs(got[zero]) < 1e-3), got[zero]
        got, want = got[~zero], want[~zero]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("measure, params, fn, distance", FULL,
                         ids=[f"{m}-{'-'.join(map(str, p.values())) or 'default'}"
                              for m, p, _, _ in FULL])
def test_equals_the_full_data_function_over_ragged_batches(rng, measure, params, fn, distance):
    acts = layers(rng, offset=50.0)
    result = feed(repsim.FeatureMoments(), acts).compute(measure, **params)
    assert result.dims == ("layer_a", "layer_b") and result.name == measure
    assert list(result.layer_a.values) == list(acts) == list(result.layer_b.values)
    assert result.attrs["n_examples"] == 213 and result.attrs["n_batches"] == 5
    assert_matches(result, expected(acts, acts, fn), distance)


@pytest.mark.parametrize("measure, params, fn, distance", [FULL[i] for i in (1, 6, 13, 16)])
def test_two_models_give_the_rectangular_full_data_matrix(rng, measure, params, fn, distance):
    acts = layers(rng, offset=5.0)
    other = {"p": acts["a"][:, :3] * 2 + 1, "q": np.sin(acts["b"])}
    acc = feed(repsim.FeatureMoments(), {k: acts[k] for k in "abc"}, other=other)
    result = acc.compute(measure, **params)
    assert result.shape == (3, 2) and list(result.layer_b.values) == ["p", "q"]
    assert_matches(result, expected({k: acts[k] for k in "abc"}, other, fn), distance)


def test_torch_batches_equal_numpy_batches(rng):
    torch = pytest.importorskip("torch")
    acts = layers(rng, offset=20.0)
    acc_np = feed(repsim.FeatureMoments(), acts)
    acc_t = feed(repsim.FeatureMoments(), {k: torch.from_numpy(v) for k, v in acts.items()})
    assert isinstance(acc_t.state_dict()["zz"], torch.Tensor)
    for measure, params, _, distance in FULL:
        # a layer's distance to itself is the sqrt of rounding (~1e-6 here) on both paths
        assert_matches(acc_t.compute(measure, **params),
                       np.asarray(acc_np.compute(measure, **params).values), distance,
                       atol=1e-6 if measure == "gulp" else 1e-12)


def test_float32_with_a_large_common_offset_stays_exact(rng):
    """The first batch's column means are subtracted before the float64 product: the
    uncentred sums of offset 1e4 data would lose ~8 of 16 digits at the centring."""
    n = 400
    signal = rng.standard_normal((n, 5))
    # full rank (a rank-5 x in float32 would put rounding noise in a 6th direction that
    # whitening measures amplify by cond(x)^2 from moments: the docs say so)
    acts = {"x": (1e4 + signal @ rng.standard_normal((5, 6))
                  + 0.3 * rng.standard_normal((n, 6))).astype(np.float32),
            "y": (-3e4 + signal[:, :3] @ rng.standard_normal((3, 4))
                  + 0.5 * rng.standard_normal((n, 4))).astype(np.float32)}
    acc = feed(repsim.FeatureMoments(), acts, bounds=[0, 64, 128, 192, 256, 320, 384, 400])
    as64 = {k: v.astype(np.float64) for k, v in acts.items()}
    for measure, params, fn, distance in FULL:
        assert_matches(acc.compute(measure, **params), expected(as64, as64, fn), distance)
    # the same data without the shift: the naive uncentred sums are visibly off
    x = as64["x"]
    naive = x.T @ x - np.outer(x.sum(0), x.sum(0)) / n
    exact = (x - x.mean(0)).T @ (x - x.mean(0))
    assert np.abs(naive - exact).max() / np.abs(exact).max() > 1e-9


def test_unbiased_terms_are_invariant_to_the_shift(rng):
    """The full-data unbiased estimator from the sums of ``x - s`` does not depend on s."""
    acts = layers(rng, n=60)
    x = np.concatenate([v.reshape(60, -1) for v in acts.values()], axis=1)
    widths = [7, 5, 6, 2]

    def terms(shift):
        xs = x - shift
        z = MM.augment(xs, widths, np)
        return F.linear_cka_terms(z.sum(0), z.T @ z, 60, widths, "unbiased")

    ref = terms(np.zeros(x.shape[1]))
    for shift in (x.mean(0), x[0], x.std(0) * rng.standard_normal(x.shape[1])):
        np.testing.assert_allclose(terms(shift), ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    # and they are n (n - 3) times the unbiased HSIC of the linear grams
    grams = [v.reshape(60, -1) @ v.reshape(60, -1).T for v in acts.values()]
    hsic = repsim.hsic(grams[0], grams[1], estimator="unbiased") if hasattr(repsim, "hsic") \
        else None
    if hsic is not None:
        np.testing.assert_allclose(ref[0, 1] / (60 * 57), float(hsic), rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 79), max_size=8, unique=True), seed=st.integers(0, 2**16),
       offset=st.floats(-1e3, 1e3))
def test_any_batching_gives_the_full_data_values(cuts, seed, offset):
    rng = np.random.default_rng(seed)
    acts = {"x": rng.standard_normal((80, 4)) + offset,
            "y": rng.standard_normal((80, 3)) * 3 - offset}
    acts["y"][:, 0] += acts["x"][:, 0]
    acc = feed(repsim.FeatureMoments(), acts, bounds=[0, *sorted(cuts), 80])
    # values near 0 (unrelated layers) carry the rounding of both computations: 1e-10 abs
    for measure, params, fn, distance in (FULL[0], FULL[1], FULL[2], FULL[12], FULL[13]):
        assert_matches(acc.compute(measure, **params), expected(acts, acts, fn), distance,
                       atol=1e-10)


def test_merge_of_accumulators_with_different_shifts_is_exact(rng):
    acts = layers(rng, offset=100.0)
    whole = feed(repsim.FeatureMoments(), acts)
    first = feed(repsim.FeatureMoments(), acts, bounds=[0, 37, 38, 101])
    second = feed(repsim.FeatureMoments(), acts, bounds=[101, 180, 213])
    assert first.shift != second.shift
    first.merge(second)
    assert first.n_examples == 213 and first.n_batches == 5
    for measure, params, _, distance in FULL:
        assert_matches(first.compute(measure, **params),
                       whole.compute(measure, **params).values, distance)
    np.testing.assert_allclose(second.state_dict()["sum_z"], feed(
        repsim.FeatureMoments(), acts, bounds=[101, 180, 213]).state_dict()["sum_z"])
    empty = repsim.FeatureMoments()
    empty.merge(whole)
    np.testing.assert_array_equal(empty.state_dict()["zz"], whole.state_dict()["zz"])
    with pytest.raises(ValueError, match="folds: 1 here, 3 in other"):
        repsim.FeatureMoments().merge(feed(repsim.FeatureMoments(folds=3), acts))
    with pytest.raises(ValueError, match="different layers"):
        feed(repsim.FeatureMoments(), {"a": acts["a"]}).merge(
            feed(repsim.FeatureMoments(), {"z": acts["a"]}))


def test_state_dict_round_trip_and_resume(rng):
    acts = layers(rng)
    whole = feed(repsim.FeatureMoments(), acts)
    part = feed(repsim.FeatureMoments(), acts, bounds=[0, 37, 38])
    resumed = repsim.FeatureMoments()
    resumed.load_state_dict(part.state_dict())
    feed(resumed, acts, bounds=[38, 101, 180, 213])
    np.testing.assert_array_equal(resumed.state_dict()["zz"], whole.state_dict()["zz"])
    assert resumed.compute("nbs").equals(whole.compute("nbs"))
    bad = dict(whole.state_dict(), zz=np.zeros((1, 3, 3)))
    target = feed(repsim.FeatureMoments(), acts, bounds=[0, 37])
    before = target.state_dict()
    with pytest.raises(ValueError, match="zz.*shape \\(1, 24, 24\\)"):
        target.load_state_dict(bad)
    np.testing.assert_array_equal(target.state_dict()["zz"], before["zz"])
    with pytest.raises(ValueError, match="shift"):
        repsim.FeatureMoments().load_state_dict(dict(whole.state_dict(), shift=(0.0,)))


def test_k_fold_r2_from_per_fold_sums_equals_ridge_r2_folds(rng):
    acts = layers(rng, n=210, offset=30.0)
    acc = repsim.FeatureMoments(folds=3)
    for fold, (lo, hi) in enumerate([(0, 70), (70, 140), (140, 210)]):  # ridge_r2's blocks
        for a, b in ((lo, lo + 33), (lo + 33, hi)):
            acc.update({k: v[a:b] for k, v in acts.items()}, fold=fold)
    for ridge, direction in ((0.0, "x_to_y"), (0.2, "mean")):
        result = acc.compute("ridge_r2", ridge=ridge, direction=direction, out_of_fold=True)
        want = expected(acts, acts, lambda x, y: repsim.ridge_r2(
            x, y, ridge, direction=direction, folds=3))
        np.testing.assert_allclose(result.values, want, rtol=1e-9)
    # in-sample values come from the summed folds
    np.testing.assert_allclose(acc.compute("linear_r2").values,
                               expected(acts, acts, lambda x, y: repsim.ridge_r2(x, y)),
                               rtol=1e-9)
    # default fold assignment: batch t -> fold t mod k
    rr = feed(repsim.FeatureMoments(folds=2), acts, bounds=[0, 50, 100, 150, 210])
    assert rr.state_dict()["n"].tolist() == [50 + 50, 50 + 60]


def test_cca_ridge_is_the_canonical_ridge_and_keeps_pwcca_finite(rng):
    n = 150
    x = rng.standard_normal((n, 5))
    x = np.c_[x, x[:, :2] + x[:, 2:4]]  # rank 5 of 7: singular covariance
    y = x[:, :3] @ rng.standard_normal((3, 4)) + rng.standard_normal((n, 4))
    acc = feed(repsim.FeatureMoments(), {"x": x, "y": y}, bounds=[0, 50, 99, 150])
    ridge = 0.25

    def regularised(a, b):
        a, b = a - a.mean(0), b - b.mean(0)

        def inv_root(c):
            w, v = np.linalg.eigh(c + ridge * np.eye(len(c)))
            return v @ np.diag(w ** -0.5) @ v.T

        m = inv_root(a.T @ a / n) @ (a.T @ b / n) @ inv_root(b.T @ b / n)
        return np.linalg.svd(m, compute_uv=False)

    rho = regularised(x, y)
    got = acc.compute("cca", ridge=ridge, summary="mean_squared")
    np.testing.assert_allclose(float(got.sel(layer_a="x", layer_b="y")),
                               np.mean(rho[:4] ** 2), rtol=1e-9)
    pw = acc.compute("pwcca", ridge=ridge)
    assert np.all(np.isfinite(pw.values)) and np.all((pw.values > 0) & (pw.values <= 1))
    # ridge=0 on the singular side is the rank-revealing (pseudo-inverse) CCA
    np.testing.assert_allclose(acc.compute("cca").values,
                               expected({"x": x, "y": y}, {"x": x, "y": y}, repsim.cca),
                               rtol=1e-8)


def test_constant_layer_is_nan_with_a_warning_naming_it(rng):
    acts = layers(rng)
    acts["flat"] = np.full((213, 3), 7.25)
    acc = feed(repsim.FeatureMoments(), acts)
    for measure in MEASURES:
        with pytest.warns(repsim.DegenerateRepresentationWarning, match="'flat'"):
            result = acc.compute(measure)
        assert np.isnan(result.sel(layer_a="flat").values).all()
        assert np.isfinite(result.sel(layer_a="a", layer_b="b").values)


def test_memory_budget_is_checked_before_anything_is_allocated(rng):
    acc = repsim.FeatureMoments(max_bytes=10_000)
    big = {"conv": np.zeros((8, 64, 4, 4)), "fc": np.ones((8, 10))}
    with pytest.raises(ValueError, match=r"acts_a\['conv'\] with 1024.*max_bytes=10000.*"
                                         r"spatial_mean.*MinibatchCKA"):
        acc.update(big)
    assert not acc.started
    z = 1024 + 10 + 2
    assert acc.required_bytes([1024, 10]) == 8 * (z * z + z)
    assert repsim.FeatureMoments(folds=3).required_bytes([4]) == 8 * 4 * 30  # + fold sum
    # the workload (24 layers x 768) fits the default budget of 4 GiB
    assert 2.5 * 2**30 < repsim.FeatureMoments().required_bytes([768] * 24) < 2.6 * 2**30
    repsim.FeatureMoments(max_bytes=None).update({"x": np.eye(3)})  # no limit


def test_bad_input_names_the_argument_layer_and_shape(rng):
    acts = layers(rng, n=20)
    acc = repsim.FeatureMoments()
    bad = dict(acts, b=acts["b"].copy())
    bad["b"][3, 1] = np.nan
    with pytest.raises(ValueError, match="acts_a\\['b'\\]"):
        acc.update(bad)
    with pytest.raises(ValueError, match="acts_a\\['c'\\]"):
        acc.update(dict(acts, c=acts["c"][:5]))
    with pytest.raises(ValueError, match="must have shape \\(n, features\\)"):
        acc.update({"v": np.ones(5)})
    with pytest.raises(TypeError, match="must be real"):
        acc.update({"v": np.ones((5, 2), dtype=complex)})
    assert not acc.started
    with pytest.raises(ValueError, match="no batches"):
        acc.compute()
    acc.update({k: v[:3] for k, v in acts.items()})
    with pytest.raises(ValueError, match="acts_a\\['a'\\] must have 7 features.*got 6"):
        acc.update(dict(acts, a=acts["a"][:, :6]))
    with pytest.raises(ValueError, match="same layers"):
        acc.update({"a": acts["a"]})
    with pytest.raises(ValueError, match="acts_b must be given in every update or in none"):
        acc.update(acts, acts)
    with pytest.raises(ValueError, match="at least 4 examples; got n=3"):
        acc.compute("cka", estimator="unbiased")
    with pytest.raises(ValueError, match="measure"):
        acc.compute("mutual_knn")
    with pytest.raises(TypeError, match="unknown \\['sigma'\\]"):
        acc.compute("cka", sigma=1.0)
    with pytest.raises(ValueError, match="alpha must be"):
        acc.compute("shape_distance", alpha=2.0)
    with pytest.raises(ValueError, match="out_of_fold=True needs an accumulator built with folds"):
        acc.compute("ridge_r2", out_of_fold=True)
    with pytest.raises(ValueError, match="fold= needs"):
        acc.update(acts, fold=0)
    with pytest.raises(ValueError, match="fold"):
        repsim.FeatureMoments(folds=2).update(acts, fold=2)
    with pytest.raises(ValueError, match="max_bytes"):
        repsim.FeatureMoments(max_bytes=0)
    with pytest.raises(ValueError, match="folds"):
        repsim.FeatureMoments(folds=1)
    empty_fold = feed(repsim.FeatureMoments(folds=3), acts, bounds=[0, 10, 20])
    with pytest.raises(ValueError, match="every fold.*\\[10, 10, 0\\]"):
        empty_fold.compute("ridge_r2", out_of_fold=True)


def test_sync_reexpresses_on_a_common_shift_and_scale_then_sums(rng):
    """A hand-written 2-process all-reduce (the partner holds the other half, at another
    scale: its layers' exponents differ from this process's)."""
    acts = layers(rng, offset=10.0)
    acts["c"] = acts["c"][:101]
    acts["c"] = np.concatenate([acts["c"], 2.0**4 * layers(rng, offset=10.0)["c"][101:]])
    whole = feed(repsim.FeatureMoments(), acts)
    mine = feed(repsim.FeatureMoments(), acts, bounds=[0, 37, 38, 101])
    partner = feed(repsim.FeatureMoments(), acts, bounds=[101, 180, 213])
    fp = float(partner._fingerprint())
    calls = []

    def all_reduce(x):
        calls.append(tuple(x.shape))
        if len(calls) == 1:  # the base's check (the shift and scale are not compared)
            x += np.array([1.0, 1.0, fp, fp * fp])
        elif len(calls) == 2:  # shifts and exponents
            x += np.asarray(own_shift + own_exps, dtype=float)
        else:
            x += partner._values[names[len(calls) - 3]]

    names = [s.name for s in partner._declared()]
    own_shift, own_exps = partner.shift, partner.exponents
    assert own_exps[2] == mine.exponents[2] + 4
    common = (tuple((a + b) / 2 for a, b in zip(mine.shift, partner.shift)),
              tuple(int(round((a + b) / 2)) for a, b in zip(mine.exponents, own_exps)))
    partner._values = MM.reexpress(partner.widths, partner._values, (own_shift, own_exps),
                                   common)
    partner.shift, partner.exponents = common
    mine.sync(all_reduce)
    assert calls[:2] == [(4,), (24,)]
    assert (mine.shift, mine.exponents) == common
    for measure, params, _, distance in FULL:
        assert_matches(mine.compute(measure, **params), whole.compute(measure, **params).values,
                       distance)


WORKER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import torch, torch.distributed as dist
    import repsim

    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        data = np.load(os.path.join(out, "data.npz"))
        acc = repsim.FeatureMoments()
        bounds = [[0, 40, 41, 90], [90, 150, 200]][rank]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            acc.update({k: torch.from_numpy(data[k][lo:hi]) for k in ("x", "y")})
        acc.sync(dist.all_reduce)
        np.save(f"{out}/r{rank}.npy", np.stack([acc.compute("cka", estimator="unbiased").values,
                                                acc.compute("pwcca").values,
                                                acc.compute("shape_distance", alpha=0.5).values]))
        narrow = repsim.FeatureMoments()
        narrow.update({"x": torch.from_numpy(data["x"][:10, : 3 + rank])})
        try:
            narrow.sync(dist.all_reduce)
        except ValueError as e:
            open(f"{out}/differ{rank}.txt", "w").write(str(e))
    finally:
        dist.destroy_process_group()
    """
)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_all_reduce_to_the_full_data_values(tmp_path, rng):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    data = {"x": rng.standard_normal((200, 6)) + 40.0}
    data["y"] = np.tanh(data["x"][:, :4] - 40.0) @ rng.standard_normal((4, 5)) - 7.0
    np.savez(tmp_path / "data.npz", **data)
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for _ in range(3):
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), port,
                                   str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(2)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        if all(p.returncode == 0 for p in procs):
            break
        if not any("Address already in use" in log for log in logs):
            pytest.fail("workers failed:\n" + "\n---\n".join(logs))
    else:
        pytest.fail("no free TCP port after 3 tries")
    want = np.stack([expected(data, data, fn) for fn in (
        lambda x, y: repsim.cka(x, y, estimator="unbiased"), repsim.pwcca,
        lambda x, y: repsim.shape_distance(x, y, 0.5))])
    r0, r1 = np.load(tmp_path / "r0.npy"), np.load(tmp_path / "r1.npy")
    np.testing.assert_array_equal(r0, r1)
    for got, ref, distance in zip(r0, want, (False, False, True)):
        assert_matches(type("R", (), {"values": got}), ref, distance)
    for r in range(2):
        assert "different layers" in (tmp_path / f"differ{r}.txt").read_text()


def test_compare_models_feeds_features_to_the_accumulator(rng, tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 4))
    data = [torch.randn(n, 6) + 3.0 for n in (16, 16, 9)]
    acc = repsim.FeatureMoments()
    result = repsim.compare_models(net, None, data, ["0", "1", "2"],
                                   run=repsim.RunOptions(accumulator=acc), progress=False)
    with torch.no_grad():
        h0 = torch.cat([net[0](x) for x in data])
        acts = {"0": h0.numpy(), "1": torch.relu(h0).numpy(), "2": net(torch.cat(data)).numpy()}
    np.testing.assert_allclose(result.values, expected(acts, acts, repsim.cka), rtol=1e-6)
    assert result.attrs["measure"] == "cka" and acc.n_examples == 41
    # the filled accumulator gives the other measures (float32 activations, float64 sums)
    np.testing.assert_allclose(acc.compute("nbs").values, expected(acts, acts, repsim.nbs),
                               rtol=1e-6)
    # checkpoints go through the base's state_dict (the shift is part of the layout)
    ck = str(tmp_path / "ck.pt")
    first = repsim.compare_models(net, None, data, ["0", "2"], progress=False,
                                  run=repsim.RunOptions(checkpoint=ck,
                                                        accumulator=repsim.FeatureMoments()))
    again = repsim.compare_models(net, None, iter(()), ["0", "2"], progress=False,
                                  run=repsim.RunOptions(checkpoint=ck,
                                                        accumulator=repsim.FeatureMoments()))
    np.testing.assert_array_equal(first.values, again.values)
    with pytest.raises(ValueError, match="features=True"):
        repsim.compare_models(net, None, data,
                              run=repsim.RunOptions(accumulator=repsim.FeatureMoments()),
                              capture=repsim.CaptureOptions(hooks=repsim.GramHooks(net, ["0"])),
                              progress=False)


def test_pairs_are_symmetric_where_the_measure_is(rng):
    acc = feed(repsim.FeatureMoments(), layers(rng))
    for measure, symmetric in MEASURES.items():
        values = acc.compute(measure).values
        if symmetric:
            np.testing.assert_allclose(values, values.T, rtol=1e-14, atol=1e-15)
        else:
            assert not np.allclose(values, values.T)
    assert math.isclose(float(acc.compute("nbs").values[0, 0]), 1.0, rel_tol=1e-12)


def test_user_guide_page_examples_print_what_the_page_says():
    import doctest

    page = ROOT / "docs" / "user_guide" / "streaming_moments.rst"
    failures, tried = doctest.testfile(str(page), module_relative=False,
                                       optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 8 and failures == 0


@pytest.mark.filterwarnings("ignore::repsim.UnderdeterminedCCAWarning")
def test_more_features_than_examples_match_too(rng):
    """p > n: the full-data functions reduce each side to its SVD; the accumulator keeps the
    p x p scatter and reveals its rank; the values agree."""
    acts = {"x": rng.standard_normal((30, 50)) + 5, "y": rng.standard_normal((30, 12)),
            "z": rng.standard_normal((30, 40))}
    acc = feed(repsim.FeatureMoments(), acts, bounds=[0, 7, 19, 30])
    for measure, params, fn, distance in FULL:
        assert_matches(acc.compute(measure, **params), expected(acts, acts, fn), distance)


def test_docstring_examples():
    import doctest

    import repsim.moments

    result = doctest.testmod(repsim.moments, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_the_batch_product_is_added_by_row_blocks_exactly(rng):
    z = rng.standard_normal((9, 37))
    acc = np.ones((37, 37))
    MM.add_cross_product(acc, z, np, max_block_bytes=8 * 37 * 5)  # blocks of 5 rows
    np.testing.assert_allclose(acc, 1.0 + z.T @ z, rtol=0, atol=1e-14)


def test_compute_by_a_measure_name_equals_compare_with_its_preset():
    # before: compute("ridge_r2") took the function's default (ridge 0, i.e. linear R^2)
    # while repsim.compare(x, y, "ridge_r2") took the measure's preset (ridge 0.1)
    from repsim._registry import all_measures

    rng = np.random.default_rng(5)
    x = rng.standard_normal((150, 7))
    y = x @ rng.standard_normal((7, 5)) + 0.8 * rng.standard_normal((150, 5))
    acc = repsim.FeatureMoments()
    acc.update({"x": x}, {"y": y})
    streaming = [m for m in all_measures() if m.family.moments is not None
                 and not any(k not in m.family.moments and k not in m.family.moment_options
                             and v != m.family.defaults().get(k) for k, v in m.options.items())]
    assert len(streaming) >= 8
    for m in streaming:
        got = float(acc.compute(m.name).values[0, 0])
        assert got == pytest.approx(float(repsim.compare(x, y, m.name)), rel=1e-10, abs=1e-12), m.name
    ridge = repsim.measure("ridge_r2").options["ridge"]
    assert ridge > 0 and float(acc.compute("ridge_r2").values[0, 0]) == pytest.approx(
        float(repsim.ridge_r2(x, y, ridge=ridge)), rel=1e-12)


def test_a_constant_layer_warning_names_the_measure_computed():
    # before: compute("nbs") on a constant layer warned "CKA is undefined"
    rng = np.random.default_rng(2)
    acc = repsim.FeatureMoments()
    acc.update({"flat": np.full((30, 3), 2.5), "x": rng.standard_normal((30, 4))})
    with pytest.warns(repsim.DegenerateRepresentationWarning, match=r"^nbs is undefined .*'flat'"):
        values = acc.compute("nbs").values
    assert np.isnan(values[0]).all() and values[1, 1] == pytest.approx(1.0, abs=1e-12)
