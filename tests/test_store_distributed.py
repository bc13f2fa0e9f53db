"""repsim.extract under torch.distributed: 2 gloo processes on CPU write one Zarr store.

The store two ranks write equals, value for value and byte for byte, the store one process
writes over the same examples in the documented order: the data's order for an iterable
every rank iterates (rank r runs batches r, r + 2, ...), and (step, rank, row) for a loader
with a DistributedSampler. A run whose two processes are killed resumes where the store's
committed progress says, and ends as the uninterrupted store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")
pytest.importorskip("dask")
if not torch.distributed.is_available():  # pragma: no cover - platform without c10d
    pytest.skip("torch.distributed is not available", allow_module_level=True)
if sys.platform == "win32":  # pragma: no cover - region writes lock with flock
    pytest.skip("distributed extraction needs POSIX file locks", allow_module_level=True)

import repsim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_store import LAYERS, net  # noqa: E402

SETUP = textwrap.dedent(
    """
    import torch

    SIZES = [8, 5, 8, 3, 8, 8, 6, 8, 8, 8, 8, 8, 8, 4]  # ragged: chunks shared by ranks

    def ragged():
        g = torch.Generator().manual_seed(2)
        return [torch.randn(s, 3, 6, 6, generator=g) for s in SIZES]

    class Items(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(3)
            self.x = torch.randn(30, 3, 6, 6, generator=g)

        def __len__(self):
            return 30

        def __getitem__(self, i):
            return {"x": self.x[i], "example_id": f"img{i:02d}"}

    def sampler(rank, world=2):
        return torch.utils.data.distributed.DistributedSampler(
            Items(), num_replicas=world, rank=rank, shuffle=True, seed=5)

    def forward(model, batch):
        return model(batch["x"])
    """
)

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import torch, torch.distributed as dist
    sys.path.insert(0, os.path.dirname(__file__))
    sys.path.insert(0, sys.argv[5])
    from dist_setup import Items, forward, ragged, sampler
    from test_store import LAYERS, net
    import repsim

    rank, port, out, phase = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    model = net()
    if phase == "first":
        ds = repsim.extract(model, ragged(), layers=LAYERS, out=f"{out}/r.zarr",
                            progress=False)
        with open(f"{out}/attrs{rank}.json", "w") as f:
            json.dump(ds.attrs, f)
        loader = torch.utils.data.DataLoader(Items(), batch_size=4, sampler=sampler(rank))
        repsim.extract(model, loader, layers=LAYERS, out=f"{out}/s.zarr", forward=forward,
                       chunk=3, progress=False)

        def failing():  # rank 1's data fail in its third step: both ranks raise
            for i, b in enumerate(ragged()):
                if rank == 1 and i == 5:
                    raise RuntimeError("data broke")
                yield b

        try:
            repsim.extract(model, failing(), layers=LAYERS, out=f"{out}/f.zarr",
                           progress=False)
        except Exception as err:
            with open(f"{out}/failed{rank}.txt", "w") as f:
                f.write(f"{type(err).__name__}: {err}")

        def killed():
            for i, b in enumerate(ragged()):
                if i in (8, 10):
                    time.sleep(0.5)  # let the writes and rank 0's commit finish
                if i == 10:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield b

        repsim.extract(model, killed(), layers=LAYERS, out=f"{out}/k.zarr", progress=False)
    else:
        calls = []
        model[0].register_forward_hook(lambda *_: calls.append(1))
        repsim.extract(model, ragged(), layers=LAYERS, out=f"{out}/k.zarr", progress=False)
        with open(f"{out}/forwards{rank}.json", "w") as f:
            json.dump(len(calls), f)
    dist.destroy_process_group()
    """
)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(tmp_path, phase):
    """Both ranks of ``phase``; their return codes and logs (retrying a taken port)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for _ in range(3):
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), port,
                                   str(tmp_path), phase, str(ROOT / "tests")], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(2)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        codes = [p.returncode for p in procs]
        if not any("Address already in use" in log for log in logs):
            return codes, logs
    pytest.fail("no free TCP port for the process group after 3 tries")


def tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def same_store(a, b):
    da, db = repsim.open_activations(a), repsim.open_activations(b)
    assert da.attrs == db.attrs and list(da.data_vars) == list(db.data_vars) == LAYERS
    for k in da.variables:
        np.testing.assert_array_equal(da[k].values, db[k].values)
    assert tree(a) == tree(b)  # byte for byte: no lock or progress left behind


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "dist_setup.py").write_text(SETUP)
    (tmp / "worker.py").write_text(WORKER)
    codes, logs = spawn(tmp, "first")
    if codes != [-signal.SIGKILL, -signal.SIGKILL]:  # both die in the third extraction
        pytest.fail("distributed workers failed:\n" + "\n---\n".join(logs))
    import zarr

    killed_attrs = dict(zarr.open_group(str(tmp / "k.zarr"), mode="r").attrs)
    with pytest.raises(ValueError, match="unfinished extraction"):
        repsim.open_activations(tmp / "k.zarr")
    codes, logs = spawn(tmp, "resume")
    if codes != [0, 0]:
        pytest.fail("resumed workers failed:\n" + "\n---\n".join(logs))
    ns: dict = {}
    exec(SETUP, ns)
    return tmp, ns, killed_attrs


def test_two_ranks_write_the_store_one_process_writes(runs, tmp_path):
    tmp, ns, _ = runs
    one = repsim.extract(net(), ns["ragged"](), layers=LAYERS, out=tmp_path / "one.zarr",
                         progress=False)
    assert one["example_id"].values.tolist() == list(range(sum(ns["SIZES"])))
    same_store(tmp / "r.zarr", tmp_path / "one.zarr")
    for r in range(2):  # both ranks return the finished store
        assert json.loads((tmp / f"attrs{r}.json").read_text()) == dict(one.attrs)
    assert "world_size" not in one.attrs and one.attrs["batches_done"] == 14


def test_a_distributed_sampler_stores_step_by_step_then_rank_by_rank(runs, tmp_path):
    tmp, ns, _ = runs
    items = ns["Items"]()
    shards = [list(ns["sampler"](r)) for r in range(2)]
    per_rank = [[s[i:i + 4] for i in range(0, len(s), 4)] for s in shards]
    order = [i for step in zip(*per_rank) for part in step for i in part]
    assert sorted(order) == list(range(30)) and order != sorted(order)
    batches = [{"x": items.x[part], "example_id": [f"img{i:02d}" for i in part]}
               for step in zip(*per_rank) for part in step]
    repsim.extract(net(), batches, layers=LAYERS, out=tmp_path / "one.zarr",
                   forward=ns["forward"], chunk=3, progress=False)
    same_store(tmp / "s.zarr", tmp_path / "one.zarr")
    ds = repsim.open_activations(tmp / "s.zarr")
    assert ds["example_id"].values.tolist() == [f"img{i:02d}" for i in order]
    assert ds.attrs["example_id_source"] == "dataset"
    # the values are the model's on those examples: an independent forward, in that order
    with torch.no_grad():
        want = net()(items.x[order]).numpy()
    np.testing.assert_allclose(ds["4"].values, want, rtol=1e-6, atol=1e-6)


def test_killed_ranks_resume_to_the_uninterrupted_store(runs, tmp_path):
    tmp, ns, killed = runs
    assert not killed["complete"] and killed["world_size"] == 2
    steps = killed["steps_done"]
    assert 1 <= steps <= 5  # killed in step 5: committed progress, not a restart
    # resumed from the committed step: each rank ran only its batches from there on
    total = len(ns["SIZES"])
    for r in range(2):
        mine = len(range(r, total, 2))
        assert json.loads((tmp / f"forwards{r}.json").read_text()) == mine - steps
    repsim.extract(net(), ns["ragged"](), layers=LAYERS, out=tmp_path / "one.zarr",
                   progress=False)
    same_store(tmp / "k.zarr", tmp_path / "one.zarr")


def test_an_error_on_one_rank_is_raised_on_both(runs):
    tmp, _, _ = runs
    assert (tmp / "failed1.txt").read_text() == "RuntimeError: data broke"
    assert (tmp / "failed0.txt").read_text() == ("RuntimeError: repsim.extract failed on "
                                                 "rank 1; see its error")


def test_only_rows_in_shared_chunks_are_written_under_the_lock(tmp_path, monkeypatch):
    """Regions.write: whole chunks without the lock, a range's partial chunks under it."""
    import contextlib

    from repsim.adapters import _extract_io as io

    data = [torch.randn(8, 3, 6, 6)]
    out = tmp_path / "a.zarr"
    repsim.extract(net(), data, layers=["4"], out=out, chunk=4, progress=False)
    regions = io.Regions(str(out), shared=True)
    regions.open()
    regions.resize(40)
    locked, held = [], []

    @contextlib.contextmanager
    def held_lock():
        held.append(True)
        yield
        held.pop()

    monkeypatch.setattr(regions.lock, "held", held_lock)
    real = regions._put
    monkeypatch.setattr(regions, "_put", lambda v, s, a, b: (
        locked.append((a, b, bool(held))) if b > a else None, real(v, s, a, b)))
    rows = np.arange(27 * 7, dtype=np.float32).reshape(27, 7)
    regions.write(9, {"4": rows}, np.arange(9, 36))  # chunks of 4: 9..12 | 12..36 |
    assert locked == [(9, 12, True), (12, 36, False)]
    locked.clear()
    regions.write(3, {"4": rows[:2]}, np.arange(3, 5))  # 3..4 | 4..5: both partial
    assert locked == [(3, 4, True), (4, 5, True)]
    np.testing.assert_array_equal(regions.arrays["4"][9:36], rows)
    np.testing.assert_array_equal(regions.arrays["example_id"][3:5], [3, 4])


def test_distributed_refusals(tmp_path):
    """Resuming with another number of processes is refused; files have one writer."""
    import zarr

    data = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    out = tmp_path / "a.zarr"
    repsim.extract(net(), data, layers=LAYERS, out=out, progress=False)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs.update({"complete": False, "world_size": 2, "steps_done": 1})
    with pytest.raises(ValueError, match="unfinished extraction by 2 process"):
        repsim.extract(net(), data, layers=LAYERS, out=out, progress=False)
