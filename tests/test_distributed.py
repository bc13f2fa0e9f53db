"""compare_models under torch.distributed: 2 CPU processes (gloo) give the 1-process result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover - platform without c10d
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import repsim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SETUP = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(36, 5))
        b = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.Tanh(), nn.Flatten(),
                          nn.Linear(6 * 64, 3))
        g = torch.Generator().manual_seed(1)
        # 7 batches: rank 0 runs 4, rank 1 runs 3; the last batch is ragged
        data = [torch.randn(10 if i < 6 else 7, 3, 8, 8, generator=g) for i in range(7)]
        return a.eval(), b.eval(), data
    """
)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch.distributed as dist
    sys.path.insert(0, os.path.dirname(__file__))
    from dist_setup import make
    import repsim

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        a, b, data = make()
        within = repsim.compare_models(a, None, data, "**", progress=False,
                                       run=repsim.RunOptions(epochs=2))
        across = repsim.compare_models(a, b, data, progress=False)
        np.save(f"{out}/within{rank}.npy", within.values)
        np.save(f"{out}/across{rank}.npy", across.values)
        grouped = repsim.compare_models(a, None, data, "**", progress=False,
                                        run=repsim.RunOptions(epochs=2),
                                        statistics=repsim.StatisticsOptions(groups=4))
        np.save(f"{out}/stderr{rank}.npy", grouped["stderr"].values)
        # checkpoints: one file per rank; a finished one returns the same result
        first = repsim.compare_models(a, b, data, progress=False, run=repsim.RunOptions(
            checkpoint=f"{out}/ck.pt", checkpoint_every=1))
        again = repsim.compare_models(a, b, iter(()), progress=False,
                                      run=repsim.RunOptions(checkpoint=f"{out}/ck.pt"))
        np.save(f"{out}/ckpt{rank}.npy", np.stack([first.values, again.values]))
        with open(f"{out}/attrs{rank}.json", "w") as f:
            json.dump({k: int(v) for k, v in within.attrs.items()
                       if k in ("n_batches", "n_examples", "world_size")}, f)
        # the accumulator's own sync with torch's collective, and its refusals
        acc = repsim.MinibatchCKA(groups=2)
        for x in data[rank::2]:
            acc.update({"x": x.reshape(len(x), -1), "y": x[:, :1].reshape(len(x), -1)})
        acc.sync(dist.all_reduce)
        np.save(f"{out}/sync{rank}.npy", np.stack([acc.compute().values,
                                                    acc.state_dict()["group_ab"].numpy()[0]]))
        other = repsim.MinibatchCKA(estimator="biased" if rank else "unbiased")
        other.update({"x": data[0].reshape(10, -1)})
        try:
            other.sync(dist.all_reduce)
        except ValueError as e:
            with open(f"{out}/differ{rank}.txt", "w") as f:
                f.write(str(e))
        empty = repsim.MinibatchCKA()
        if rank == 0:
            empty.update({"x": data[0].reshape(10, -1)})
        try:
            empty.sync(dist.all_reduce)
        except ValueError as e:
            with open(f"{out}/empty{rank}.txt", "w") as f:
                f.write(str(e))
        try:
            repsim.compare_models(a, None, data, progress=False,
                                  statistics=repsim.StatisticsOptions(kernel="rbf"))
        except ValueError as e:
            with open(f"{out}/rbf{rank}.txt", "w") as f:
                f.write(str(e))
    finally:
        dist.destroy_process_group()
    """
)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process(tmp_path):
    (tmp_path / "dist_setup.py").write_text(SETUP)
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for attempt in range(3):  # the free port can be taken in between: retry with another
        port = str(free_port())
        procs = [
            subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), "2", port,
                              str(tmp_path)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for r in range(2)
        ]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        if all(p.returncode == 0 for p in procs):
            break
        if not any("Address already in use" in log for log in logs):
            pytest.fail("distributed workers failed:\n" + "\n---\n".join(logs))
    else:
        pytest.fail("no free TCP port for the process group after 3 tries")

    ns: dict = {}
    exec(SETUP, ns)
    a, b, data = ns["make"]()
    within = repsim.compare_models(a, None, data, "**", progress=False,
                                   run=repsim.RunOptions(epochs=2))
    across = repsim.compare_models(a, b, data, progress=False)
    for name, single in (("within", within), ("across", across)):
        r0 = np.load(tmp_path / f"{name}0.npy")
        r1 = np.load(tmp_path / f"{name}1.npy")
        np.testing.assert_array_equal(r0, r1)  # every process returns the same result
        # equal to the single-process one up to the order of the float64 sums
        np.testing.assert_allclose(r0, single.values, rtol=1e-12, atol=1e-14)
    # per-group sums (for intervals) land in the same groups as in one process
    grouped = repsim.compare_models(a, None, data, "**", progress=False,
                                    run=repsim.RunOptions(epochs=2),
                                    statistics=repsim.StatisticsOptions(groups=4))
    for r in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"stderr{r}.npy"), grouped["stderr"].values,
                                   rtol=1e-9, atol=1e-13)
    for r in range(2):
        assert (tmp_path / f"ck.rank{r}of2.pt").exists()
        first, again = np.load(tmp_path / f"ckpt{r}.npy")
        np.testing.assert_array_equal(first, again)
        np.testing.assert_allclose(first, across.values, rtol=1e-12, atol=1e-14)
    assert not (tmp_path / "ck.pt").exists()
    attrs = json.loads((tmp_path / "attrs0.json").read_text())
    assert attrs == {"n_batches": 14, "n_examples": 2 * (6 * 10 + 7), "world_size": 2}
    assert "explicit sigma" in (tmp_path / "rbf1.txt").read_text()
    # acc.sync(torch.distributed.all_reduce) sums every declared state: the result of one
    # accumulator over all batches, on both ranks; mismatches raise on every rank
    whole = repsim.MinibatchCKA(groups=2)
    for x in data[0::2] + data[1::2]:
        whole.update({"x": x.reshape(len(x), -1), "y": x[:, :1].reshape(len(x), -1)})
    for r in range(2):
        values = np.load(tmp_path / f"sync{r}.npy")[0]
        np.testing.assert_allclose(values, whole.compute().values, rtol=1e-12)
        assert "different layers or options" in (tmp_path / f"differ{r}.txt").read_text()
        assert "1 of 2 processes have no batches" in (tmp_path / f"empty{r}.txt").read_text()
