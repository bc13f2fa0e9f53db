"""Similarity during training: the torchmetrics metric equals MinibatchCKA (and an
independent float64 minibatch CKA) over the same batches, also synced across 2 gloo
processes; the Lightning callback logs layer-wise CKA to a CSV logger without changing the
training; neither library is imported by ``import repsim``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

import repsim  # noqa: E402
from repsim.integrations.torchmetrics import MinibatchCKAMetric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def batches(sizes=(12, 12, 9, 16, 7), seed=0):
    """Ragged batches of three related layers (and a second model's two)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, 6, generator=g, dtype=torch.float64)
        a = {"x": x, "h": torch.tanh(x @ torch.randn(6, 5, generator=g, dtype=torch.float64)),
             "z": x[:, :2] ** 2}
        b = {"p": x @ torch.randn(6, 3, generator=g, dtype=torch.float64),
             "q": torch.randn(n, 4, generator=g, dtype=torch.float64)}
        out.append((a, b))
    return out


def u_centre(k):
    n = len(k)
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    r = k.sum(1) / (n - 2)
    u = k - r[:, None] - r[None, :] + k.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def ref_minibatch_cka(pairs):
    """sum_t <U(K_t), U(L_t)> / sqrt(sum_t <U(K_t), U(K_t)> sum_t <U(L_t), U(L_t)>), linear."""
    names_a, names_b = list(pairs[0][0]), list(pairs[0][1])
    ab = np.zeros((len(names_a), len(names_b)))
    aa, bb = np.zeros(len(names_a)), np.zeros(len(names_b))
    for a, b in pairs:
        ua = [u_centre(a[n].numpy() @ a[n].numpy().T) for n in names_a]
        ub = [u_centre(b[n].numpy() @ b[n].numpy().T) for n in names_b]
        ab += np.array([[np.sum(p * q) for q in ub] for p in ua])
        aa += np.array([np.sum(p * p) for p in ua])
        bb += np.array([np.sum(q * q) for q in ub])
    return ab / np.sqrt(aa[:, None] * bb[None, :])


def test_the_metric_equals_minibatch_cka_and_the_reference():
    data = batches()
    metric = MinibatchCKAMetric(["x", "h", "z"], ["p", "q"])
    acc = repsim.MinibatchCKA()
    for a, b in data:
        metric.update(a, b)
        acc.update(a, b)
    got = metric.compute()
    assert got.dtype == torch.float64 and got.shape == (3, 2)
    np.testing.assert_allclose(got.numpy(), acc.compute().values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.numpy(), ref_minibatch_cka(data), rtol=0, atol=1e-12)
    assert int(metric.n_batches) == 5 and int(metric.n_examples) == 56
    labelled = metric.to_accumulator().compute()
    assert labelled.layer_a.values.tolist() == ["x", "h", "z"]
    np.testing.assert_array_equal(labelled.values, got.numpy())
    metric.reset()
    assert int(metric.n_batches) == 0 and float(metric.sum_ab.abs().sum()) == 0.0


@pytest.mark.parametrize("options", [dict(), dict(estimator="biased", weighting="batches"),
                                     dict(kernel="rbf", sigma=2.0)])
def test_within_one_model_and_forward_equal_minibatch_cka(options):
    data = batches(seed=1)
    metric = MinibatchCKAMetric(3, **options)
    acc = repsim.MinibatchCKA(**options)
    for a, _ in data:
        arrays = list(a.values())
        one = repsim.MinibatchCKA(**options)
        one.update(arrays)
        step = metric(arrays)  # forward: this batch's value, and accumulated
        np.testing.assert_allclose(step.numpy(), one.compute().values, rtol=0, atol=1e-12)
        acc.update(arrays)
    np.testing.assert_allclose(metric.compute().numpy(), acc.compute().values, rtol=0, atol=1e-12)


def test_the_metric_refuses_what_it_cannot_sum():
    with pytest.raises(ValueError, match="fixed sigma"):
        MinibatchCKAMetric(2, kernel="rbf")
    with pytest.raises(TypeError, match="layers_a"):
        MinibatchCKAMetric([])
    metric = MinibatchCKAMetric(["x", "h"])
    a, _ = batches()[0]
    with pytest.raises(ValueError, match="same layers"):
        metric.update({"x": a["x"], "z": a["z"]})
    with pytest.raises(TypeError, match="numpy arrays"):
        metric.update({"x": a["x"].numpy(), "h": a["h"].numpy()})
    with pytest.raises(ValueError, match="acts_b must be given in every update or in none"):
        metric.update({"x": a["x"], "h": a["h"]}, {"p": a["x"]})
    assert int(metric.n_batches) == 0  # nothing half-added


def test_import_repsim_imports_neither_library():
    code = ("import sys, repsim; repsim.MinibatchCKA; "
            "print([m for m in ('torchmetrics', 'lightning') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ 2 processes (gloo)

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank, world, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        data = batches()
        metric = MinibatchCKAMetric(["x", "h", "z"], ["p", "q"])
        for a, b in data[rank::world]:  # rank 0: batches 0, 2, 4; rank 1: 1, 3
            metric.update(a, b)
        synced = metric.compute()  # torchmetrics syncs on compute
        local = int(metric.n_batches)  # and restores the local states afterwards
        with metric.sync_context():
            acc = metric.to_accumulator()
        own = repsim.MinibatchCKA()
        for a, b in data[rank::world]:
            own.update(a, b)
        own.sync(dist.all_reduce)
        np.savez(f"{out}/rank{rank}.npz", synced=synced.numpy(), acc=acc.compute().values,
                 n=acc.n_batches, local=local, own=own.compute().values)
    finally:
        dist.destroy_process_group()


def test_sync_across_two_processes_equals_one_process(tmp_path):
    if not torch.distributed.is_available():  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_sync_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    acc = repsim.MinibatchCKA()
    for a, b in batches():
        acc.update(a, b)
    want = acc.compute().values
    for rank, local in ((0, 3), (1, 2)):
        got = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_allclose(got["synced"], want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["acc"], want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["own"], got["synced"], rtol=0, atol=1e-12)
        assert int(got["n"]) == 5 and int(got["local"]) == local
