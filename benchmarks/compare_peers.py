"""Side by side: repsim.compare_models against the PyTorch CKA libraries on PyPI.

Usage (peers installed without their heavy dependencies, see requirements-peers.txt)::

    .venv/bin/pip install --no-deps -r benchmarks/requirements-peers.txt
    .venv/bin/python benchmarks/compare_peers.py [--batches-a 2] [--batches-b 1] \
        [--rows-a 3] [--rows-b 2] [--repeats 2] [--device cpu] [--json results.json]

Workloads (CIFAR-style ResNets from :func:`repsim.models.cifar_resnet`, random weights, batches of
256 random 32x32 images, unbiased minibatch CKA):

(a) ResNet-20 vs ResNet-56 on the residual-block outputs (9 x 27 layers);
(b) ResNet-56 against itself on every module output (the paper's protocol): every named
    module except the root and the ``nn.Sequential`` containers (whose output is their
    last child's), 169 layers.

For each implementation: total time; metric time = total minus the forward passes the
workload needs (one per model per batch, timed without hooks in the same run); that over
the gram floor (the float32 ``X X^T`` grams of the same layers alone, timed in the same
run); peak memory (resident-set high-water mark above the level at the start of the run,
or CUDA peak allocation); and the largest deviation from an independent float64
reference (grams of float64 activations, unbiased HSIC by Song et al.'s formula, summed
over batches). repsim, the floor and the forward timing are interleaved over
``--repeats`` rounds and the minimum is kept; each peer runs once.

torch-cka and ckatorch recompute grams for every layer pair, which makes (b) take hours;
there they run on ``--rows-b`` evenly spaced rows of the matrix (against all columns) and
their times are scaled to the full matrix by the row count (marked "rows k/L, scaled");
on (a) likewise with ``--rows-a`` of the 9 rows. The forward passes dominate a CPU run, so
``total - forward`` is the difference of two noisy numbers; for repsim the table also gives
the time measured inside its own work (the gram hooks and ``update_grams``), which the
floor ratio in parentheses uses, and a paired measurement: in extra runs every hook's
``X X^T`` is timed again on the same tensor right after repsim's own work for that
layer, so the load of a shared machine hits both sides alike (minimum ratio over
``--repeats`` runs).
ckatorch's own ``CKA`` cannot take conv maps (``torch.bmm`` needs 3-d input); it runs
through a subclass whose hook flattens each output to ``(1, n, features)``, the layout
its ``cka_batch`` expects.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time
import warnings
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

import repsim
from repsim.models import block_names

N = 256


# --------------------------------------------------------------------------- utilities
class Memory:
    """Peak memory of a block: CUDA peak allocation, or the RSS high-water mark (Linux)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            try:  # hand freed heap pages back to the OS, or they hide this block's growth
                import ctypes

                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
            try:  # reset the high-water mark to the current RSS
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = self._status("VmHWM") - self.start
        return False


def machine_units():
    info = repsim.precision_support()
    return ", ".join(info["units"]) or "no bfloat16 units"


def machine():
    """CPU model, its bfloat16 flags and the load average: printed first and last."""
    info = repsim.precision_support()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"CPU: {info['name']}; bfloat16 units: {machine_units()}; load average {load}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def every_module(model):
    return [n for n, m in model.named_modules() if n and not isinstance(m, nn.Sequential)]


def capture(model, names, fn, x):
    """Run ``model(x)`` with hooks calling ``fn(name, output)``; hooks removed after."""
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: fn(n, o)) for n in names]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()


class MetricClock:
    """Time spent in repsim's own work during compare_models: the gram hooks (flatten,
    upcast, ``X X^T``) and ``MinibatchCKA.update_grams`` (centring, pairing product)."""

    def __init__(self, device, paired=False):
        from repsim.adapters import torch as adapter
        from repsim.streaming import MinibatchCKA

        self.device, self.total, self.floor, self.paired = device, 0.0, 0.0, paired
        self._patches = [(adapter.GramHooks, "_gram"), (MinibatchCKA, "update_grams")]

    def __enter__(self):
        self._saved = []
        for owner, attr in self._patches:
            original = getattr(owner, attr)
            self._saved.append((owner, attr, original))

            def wrapper(*a, _f=original, _gram=attr == "_gram", **k):
                sync(self.device)
                t0 = time.perf_counter()
                out = _f(*a, **k)
                sync(self.device)
                t1 = time.perf_counter()
                self.total += t1 - t0
                if _gram and self.paired:
                    # the floor's own X X^T on the same tensor, right after: a paired
                    # measurement that a shared machine's load drift hits alike
                    x = a[1].detach()
                    x = x.reshape(x.shape[0], -1).float()
                    sync(self.device)
                    t2 = time.perf_counter()
                    x @ x.T
                    sync(self.device)
                    self.floor += time.perf_counter() - t2
                return out

            setattr(owner, attr, wrapper)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in self._saved:
            setattr(owner, attr, original)
        return False


# --------------------------------------------------------------------------- reference
class Reference:
    """Unbiased minibatch CKA in float64, written out from Song et al.'s formula."""

    def __init__(self, names_a, names_b):
        self.names_a, self.names_b = names_a, names_b
        la, lb = len(names_a), len(names_b)
        self.xy = np.zeros((la, lb))
        self.xx = np.zeros(la)
        self.yy = np.zeros(lb)
        self.last = None

    @staticmethod
    def _grams(model, names, x):
        grams = {}

        def keep(name, out):
            a = out.detach().double().reshape(out.shape[0], -1)
            k = (a @ a.T).cpu().numpy()
            np.fill_diagonal(k, 0.0)  # K~: zero diagonal
            grams[name] = k

        capture(model, names, keep, x)
        return np.stack([grams[n] for n in names])

    def update(self, model_a, model_b, x):
        ka = self._grams(model_a, self.names_a, x)
        kb = ka if model_b is model_a and self.names_b == self.names_a else \
            self._grams(model_b, self.names_b, x)
        n = ka.shape[1]
        fa, fb = ka.reshape(len(ka), -1), kb.reshape(len(kb), -1)
        ra, rb = ka.sum(2), kb.sum(2)  # K~ 1
        sa, sb = ra.sum(1), rb.sum(1)  # 1' K~ 1

        def hsic(f1, f2, r1, r2, s1, s2):
            # [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))
            return (f1 @ f2.T + np.outer(s1, s2) / ((n - 1) * (n - 2))
                    - 2.0 / (n - 2) * (r1 @ r2.T)) / (n * (n - 3))

        xy = hsic(fa, fb, ra, rb, sa, sb)
        xx = np.einsum("ij,ij->i", fa, fa) / (n * (n - 3)) + sa * sa / (
            (n - 1) * (n - 2) * n * (n - 3)) - 2.0 / (n - 2) * np.einsum("ij,ij->i", ra, ra) / (n * (n - 3))
        yy = np.einsum("ij,ij->i", fb, fb) / (n * (n - 3)) + sb * sb / (
            (n - 1) * (n - 2) * n * (n - 3)) - 2.0 / (n - 2) * np.einsum("ij,ij->i", rb, rb) / (n * (n - 3))
        self.xy += xy
        self.xx += xx
        self.yy += yy
        self.last = xy / np.sqrt(np.outer(xx, yy))

    def result(self):
        return self.xy / np.sqrt(np.outer(self.xx, self.yy))


# --------------------------------------------------------------------------- peers
def run_torch_cka(model_a, model_b, names_a, names_b, loader, device):
    from torch_cka import CKA

    cka = CKA(model_a, model_b, model1_name="A", model2_name="B", model1_layers=names_a,
              model2_layers=names_b, device=str(device))
    cka.compare(loader)
    out = cka.export()
    return out["CKA"].double().cpu().numpy(), out["model1_layers"], out["model2_layers"]


def run_ckatorch(model_a, model_b, names_a, names_b, loader, device):
    import ckatorch

    class FlatCKA(ckatorch.CKA):
        """Conv maps flattened to (1, n, features), the layout cka_batch expects."""

        def _hook(self, model, module_name, module, inp, out):
            flat = out.detach().flatten(1).unsqueeze(0)
            (self.first_features if model == "first" else self.second_features)[module_name] = flat

    cka = FlatCKA(model_a, model_b, layers=names_a, second_layers=names_b, first_name="A",
                  second_name="B", device=device)
    # ckatorch maps list batches onto forward's argument names (input and target would need
    # two); a dataset of {"x": image} dicts is its documented layout
    images = loader.dataset.tensors[0]
    dict_loader = torch.utils.data.DataLoader(_DictImages(images), batch_size=N, shuffle=False)
    values = cka(dict_loader, epochs=1)
    return (values.double().cpu().numpy(), cka.first_model_info.layers,
            cka.second_model_info.layers)


def run_cka_pytorch(model_a, model_b, names_a, names_b, loader, device):
    from cka_pytorch import CKACalculator

    calc = CKACalculator(model_a, model_b, model1_layers=names_a, model2_layers=names_b,
                         device=device, verbose=False)
    values = calc.calculate_cka_matrix(loader, num_epochs=1)
    la, lb = list(calc.hook_manager1.module_names), list(calc.hook_manager2.module_names)
    calc.hook_manager1.clear_all()
    calc.hook_manager2.clear_all()
    return values.double().cpu().numpy(), la, lb


class _DictImages(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"x": self.images[i]}


PEERS = {"torch-cka": run_torch_cka, "ckatorch": run_ckatorch, "cka-pytorch": run_cka_pytorch}
PAIRWISE = {"torch-cka", "ckatorch"}  # recompute grams per layer pair


def deviation(values, rows, cols, ref, names_a, names_b):
    ia = {n: i for i, n in enumerate(names_a)}
    ib = {n: i for i, n in enumerate(names_b)}
    want = ref[np.ix_([ia[r] for r in rows], [ib[c] for c in cols])]
    return float(np.nanmax(np.abs(values - want))) if values.size else float("nan")


# --------------------------------------------------------------------------- workload
def run_workload(label, model_a, model_b, names_a, names_b, batches, args, device):
    within = model_b is model_a
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(batches, torch.zeros(len(batches), dtype=torch.long)),
        batch_size=N, shuffle=False)
    n_batches = len(loader)
    act_bytes = {}

    def count(name, out):
        act_bytes[name] = out.numel() * 4

    x0 = batches[:N].to(device)
    capture(model_a, names_a, count, x0)
    if not within:
        capture(model_b, names_b, lambda n, o: act_bytes.__setitem__("b:" + n, o.numel() * 4), x0)
    print(f"\n== workload {label}: {len(names_a)} x {len(names_b)} layers, {n_batches} batches "
          f"of {N}; activations of one batch {sum(act_bytes.values()) / 2**20:.0f} MiB", flush=True)

    # float64 reference
    ref = Reference(names_a, names_b)
    for x, _ in loader:
        ref.update(model_a, model_b, x.to(device))
    ref_values, ref_last = ref.result(), ref.last

    # forward-only, gram floor (float32 X X^T of the same layers, batch 0), repsim: interleaved
    def forwards():
        with torch.inference_mode():
            for x, _ in loader:
                x = x.to(device)
                model_a(x)
                if not within:
                    model_b(x)

    stored = {}
    capture(model_a, names_a, lambda n, o: stored.__setitem__(("a", n), o.detach().reshape(N, -1).float()), x0)
    if not within:
        capture(model_b, names_b, lambda n, o: stored.__setitem__(("b", n), o.detach().reshape(N, -1).float()), x0)
    host = {k: v.cpu().numpy() for k, v in stored.items()} if device.type == "cpu" else None

    def floor():
        with torch.inference_mode():
            for x in stored.values():
                x @ x.T

    def floor_syrk():  # numpy recognises x @ x.T and calls BLAS ssyrk (half the flops)
        for x in host.values():
            x @ x.T

    def ours(precision="float32"):
        return repsim.compare_models(model_a, None if within else model_b, loader, names_a,
                                     None if within else names_b, progress=False,
                                     device=device, precision=precision)

    best = {"forward": np.inf, "floor": np.inf, "floor_syrk": np.inf, "repsim": np.inf,
            "instrumented": np.inf}
    result, peak = None, 0
    for _ in range(args.repeats):
        best["forward"] = min(best["forward"], timed(forwards, device)[0])
        best["floor"] = min(best["floor"], n_batches * timed(floor, device)[0])
        if host is not None:
            best["floor_syrk"] = min(best["floor_syrk"], n_batches * timed(floor_syrk, device)[0])
        if result is None:  # first round: also the peak memory (growth above the start)
            with Memory(device) as mem, MetricClock(device) as clock:
                t, result = timed(ours, device)
            peak = mem.peak
        else:
            with MetricClock(device) as clock:
                t, result = timed(ours, device)
        best["repsim"] = min(best["repsim"], t)
        best["instrumented"] = min(best["instrumented"], clock.total)
    reduced = {}  # the reduced precision modes: total time (min over repeats), result
    for mode in [m for m in args.precisions if m != "float32"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", repsim.PrecisionWarning)  # timed where slower too
            runs = [timed(lambda: ours(mode), device) for _ in range(args.repeats)]
        reduced[mode] = (min(t for t, _ in runs), runs[0][1])
    stored, host = {}, {}  # free the floor's activations before the peers run
    gc.collect()
    paired = []
    for _ in range(args.repeats):
        with MetricClock(device, paired=True) as clock:
            ours()
        paired.append((clock.total / clock.floor, clock.total, clock.floor))
    ratio, in_repsim, paired_floor = min(paired)
    print(f"paired: repsim's own work {in_repsim:.2f} s against {paired_floor:.2f} s of X X^T "
          f"on the same tensors at the same moments: {ratio:.3f}x", flush=True)
    rows = {"repsim": dict(total=best["repsim"], memory=peak, forwards=1,
                           deviation=float(np.abs(result.values - ref_values).max()),
                           instrumented=best["instrumented"], paired_ratio=ratio,
                           note=f"paired measurement: {ratio:.2f}x the floor")}
    for mode, (t_mode, res_mode) in reduced.items():
        rows[f"repsim, precision={mode!r}"] = dict(
            total=t_mode, memory=float("nan"), forwards=1,
            deviation=float(np.abs(res_mode.values - ref_values).max()),
            note=f"products in {mode} (repsim.precision_support: {machine_units()})")
    print(f"forward {best['forward']:.2f} s, gram floor {best['floor']:.2f} s "
          f"(numpy ssyrk {best['floor_syrk']:.2f} s), repsim {best['repsim']:.2f} s "
          f"(in hooks + update_grams {best['instrumented']:.2f} s)", flush=True)

    # peers, each on fresh copies of the models (torch-cka and ckatorch never remove hooks)
    for peer in args.peers:
        ma = copy.deepcopy(model_a)
        mb = ma if within else copy.deepcopy(model_b)
        rows_a, scale, note = names_a, 1.0, ""
        k = args.rows_b if within else args.rows_a
        if peer in PAIRWISE and k < len(names_a):
            idx = np.linspace(0, len(names_a) - 1, k).round().astype(int)
            rows_a = [names_a[i] for i in idx]
            scale = len(names_a) / len(rows_a)
            note = f"rows {len(rows_a)}/{len(names_a)}, scaled"
        try:
            with Memory(device) as mem:
                t, (values, la, lb) = timed(
                    lambda: PEERS[peer](ma, mb, rows_a, names_b, loader, device), device)
        except Exception as e:  # report, keep going
            print(f"{peer}: failed: {type(e).__name__}: {e}", flush=True)
            rows[peer] = dict(total=float("nan"), memory=float("nan"), forwards=2,
                              deviation=float("nan"),
                              note=f"failed: {type(e).__name__}: {e}")
            continue
        dev = deviation(values, la, lb, ref_values, names_a, names_b)
        # diagnose a large deviation: rows/columns labelled in another order than computed
        # (hook-firing order), or only the last batch kept
        fired_a, fired_b = fired_order(ma, la, x0), fired_order(mb, lb, x0)
        checks = {"as labelled": (la, lb)}
        if (fired_a, fired_b) != (list(la), list(lb)):
            checks["in hook-firing order"] = (fired_a, fired_b)
        found = []
        for what, (ra, cb) in checks.items():
            for ref_name, ref_mat in (("all batches", ref_values), ("last batch only", ref_last)):
                found.append((deviation(values, ra, cb, ref_mat, names_a, names_b), what, ref_name))
        best_dev, what, ref_name = min(found)
        if dev > 1e-3 and best_dev < dev / 10:
            if what != "as labelled":
                note = (note + "; " if note else "") + (
                    "values computed in hook-firing order but labelled in module order")
            if ref_name == "last batch only":
                note = (note + "; " if note else "") + (
                    "result is the last batch's CKA (per-batch values overwritten, not summed)")
            note += f" (deviation {best_dev:.0e} once accounted for)"
        elif dev > 1e-3:
            note = (note + "; " if note else "") + "float32 HSIC terms (cancellation)"
        rows[peer] = dict(total=t, scale=scale, memory=mem.peak, forwards=2, deviation=dev,
                          note=note)
        print(f"{peer}: {t:.2f} s{' x %.1f' % scale if scale != 1 else ''}, "
              f"deviation {dev:.2e} {note}", flush=True)
        ma = mb = None
        gc.collect()

    fwd = best["forward"]
    for name, r in rows.items():
        # a row subset's metric time is scaled to the full matrix; the forwards are not
        r["metric"] = (r["total"] - fwd) * r.pop("scale", 1.0)
        r["total"] = fwd + r["metric"]
        r["over_floor"] = r["metric"] / best["floor"]
    return dict(workload=label, layers=[len(names_a), len(names_b)], batches=n_batches,
                forward=fwd, floor=best["floor"], floor_syrk=best["floor_syrk"],
                activations_mib=sum(act_bytes.values()) / 2**20, rows=rows)


def fired_order(model, names, x):
    """``names`` in the order their forward hooks fire."""
    fired = []
    capture(model, list(names), lambda n, o: fired.append(n) if n not in fired else None, x)
    return fired


def markdown(res):
    lines = [
        f"**Workload {res['workload']}** — {res['layers'][0]} x {res['layers'][1]} layers, "
        f"{res['batches']} batches of {N}; forward passes {res['forward']:.2f} s; gram floor "
        f"{res['floor']:.2f} s (float32 X Xᵀ, torch matmul; numpy ssyrk "
        f"{res['floor_syrk']:.2f} s); activations of one batch {res['activations_mib']:.0f} MiB.",
        "",
        "| implementation | total (s) | metric = total − forward (s) | metric / gram floor "
        "| peak memory (MiB) | max deviation from float64 | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in res["rows"].items():
        metric = f"{r['metric']:.2f}"
        ratio = f"{r['over_floor']:.2f}"
        if "instrumented" in r:
            metric += f" (in repsim: {r['instrumented']:.2f})"
            ratio += f" ({r['instrumented'] / res['floor']:.2f})"
        lines.append(
            f"| {name} | {r['total']:.2f} | {metric} | {ratio} | "
            f"{r['memory'] / 2**20:.0f} | {r['deviation']:.1e} | {r['note']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches-a", type=int, default=2)
    ap.add_argument("--batches-b", type=int, default=1)
    ap.add_argument("--rows-a", type=int, default=3,
                    help="rows of (a) the pair-by-pair peers compute (times scaled)")
    ap.add_argument("--rows-b", type=int, default=2,
                    help="rows of (b) the pair-by-pair peers compute (times scaled)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["a", "b"], default=None)
    ap.add_argument("--peers", default="torch-cka,ckatorch,cka-pytorch")
    ap.add_argument("--json", default=None)
    ap.add_argument("--precisions", default="float32,bfloat16",
                    help="repsim's precision modes to time (float32 is always the main row)")
    args = ap.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    args.precisions = [p for p in args.precisions.split(",") if p]
    device = torch.device(args.device)
    torch.manual_seed(0)
    r20 = repsim.models.cifar_resnet(20).to(device).eval()
    r56 = repsim.models.cifar_resnet(56).to(device).eval()
    g = torch.Generator().manual_seed(1)
    print(machine(), flush=True)
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy "
          f"{np.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"cpu count {os.cpu_count()}", flush=True)
    # warm-up: numba compilation, first-call overheads
    warm = torch.randn(8, 3, 32, 32, generator=g).to(device)
    repsim.compare_models(r20, None, [warm], "stage1.block0", progress=False)
    results = []
    with nullcontext():
        if args.only in (None, "a"):
            xa = torch.randn(args.batches_a * N, 3, 32, 32, generator=g)
            results.append(run_workload("(a) ResNet-20 vs ResNet-56, block outputs", r20, r56,
                                        block_names(r20), block_names(r56), xa, args, device))
        if args.only in (None, "b"):
            xb = torch.randn(args.batches_b * N, 3, 32, 32, generator=g)
            names = every_module(r56)
            results.append(run_workload("(b) ResNet-56 vs itself, every module", r56, r56,
                                        names, names, xb, args, device))
    print()
    for res in results:
        print(markdown(res))
        print()
    print(machine(), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
