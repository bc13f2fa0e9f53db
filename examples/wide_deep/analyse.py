"""Measurements: within-model and cross-model CKA, the declared block, PC1, dominant examples.

Every CKA result is minibatch CKA (unbiased HSIC) from :func:`repsim.compare_models` with a
delete-a-group jackknife over batch groups: its intervals describe the measurement on these
fixed held-out images (batch noise), not training randomness -- seeds show that.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import repsim

from .config import analysis_settings, outputs_settings
from .train import predict

def layer_names(model, cfg) -> list[str]:
    """The analysed layers (``cfg["layers"]``: every layer, ReLU outputs or block outputs)."""
    from repsim.models import layer_names as names

    return names(model, cfg["layers"])


def eval_loader(x, batch_size):
    """A shuffling loader over held-out images; ``compare_models`` seeds its order per pass."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    drop_last = 0 < len(x) % batch_size < 4  # every batch needs n >= 4 (unbiased HSIC)
    return DataLoader(TensorDataset(torch.from_numpy(np.ascontiguousarray(x))), batch_size=batch_size,
                      shuffle=True, drop_last=drop_last)


def n_groups(n, cfg, passes) -> int:
    """Jackknife groups: ``interval_groups``, or fewer when there are fewer batches."""
    bs = cfg["cka_batch_size"]
    batches = passes * (math.ceil(n / bs) - (0 < n % bs < 4))
    return max(2, min(cfg["interval_groups"], batches))


def remove_pc1(x):
    """Per-batch transform: remove each layer's first principal component."""
    return repsim.remove_top_pcs(x, k=1)


def within_model_cka(model, names, x, cfg, seed, device, *, transform=None, passes=None, name="model"):
    """Minibatch CKA of every pair of ``names`` on ``x``, with jackknife replicates.

    Runs with the same ``x``, ``seed`` and passes see the same batches, so
    :func:`repsim.jackknife_interval` can pair them (e.g. before and after PC1 removal).
    """
    passes = passes or cfg["passes"]
    return repsim.compare_models(
        model, None, eval_loader(x, cfg["cka_batch_size"]), layers_a=list(names),
        estimator="unbiased", device=device, progress=False, names=(name, name),
        capture=repsim.CaptureOptions(transform=transform),
        statistics=repsim.StatisticsOptions(groups=n_groups(len(x), cfg, passes),
                                            level=cfg["level"]),
        run=repsim.RunOptions(epochs=passes, seed=seed),
    )


def cross_model_cka(model_a, model_b, names_a, names_b, x, cfg, seed, device, names=("a", "b")):
    """Minibatch CKA between every layer of ``model_a`` and every layer of ``model_b``."""
    return repsim.compare_models(
        model_a, model_b, eval_loader(x, cfg["cka_batch_size"]), layers_a=list(names_a),
        layers_b=list(names_b), estimator="unbiased", device=device, progress=False, names=names,
        statistics=repsim.StatisticsOptions(groups=n_groups(len(x), cfg, cfg["cross_passes"]),
                                            level=cfg["level"]),
        run=repsim.RunOptions(epochs=cfg["cross_passes"], seed=seed),
    )


def block_options(cfg, n_layers) -> dict:
    """Options of :func:`repsim.find_block` (declared in the config).

    The same for every ``n_layers``: the segmentation's cost is linear in a run's size,
    so its penalty needs no scaling, and the relative size floor (``block_min_share``)
    is applied by the library. ``n_layers`` is kept so call sites state the matrix.
    """
    del n_layers
    return {"penalty": cfg["block_penalty"], "min_inside": cfg["block_min_inside"],
            "min_contrast": cfg["block_min_contrast"], "min_size": cfg["block_min_size"],
            "min_share": cfg["block_min_share"], "neighbours": cfg["block_neighbours"]}


def declared_block(sim, cfg):
    """``(first, last)`` of the declared block of a CKA matrix, or None; and the
    :func:`repsim.find_block` Dataset."""
    ds = repsim.find_block(sim, **block_options(cfg, sim.shape[0]))
    if not ds.attrs["has_block"]:
        return None, ds
    return (int(ds.attrs["block_first_index"]), int(ds.attrs["block_last_index"])), ds


def window(n_layers, block, neighbours):
    """Layers a block's local contrast uses: the block and its neighbours on each side."""
    f, l = block
    width = max(neighbours, -(-(l - f + 1) // 2))
    return max(0, f - width), min(n_layers - 1, l + width)


def save(ds, path: Path, attrs: dict) -> None:
    """Attach provenance (netCDF-compatible) and write atomically with repsim.save_result."""
    from repsim.results import netcdf_attrs

    ds.attrs.update(attrs)
    for var in ds.variables.values():
        var.attrs = netcdf_attrs(var.attrs)
    repsim.save_result(ds, path)


def cached(path: Path, settings: dict):
    """The result at ``path`` if it was computed with ``settings``; None when absent,
    unreadable (a truncated write: recomputed, never trusted) or from other settings."""
    if not path.is_file():
        return None
    try:
        ds = repsim.load_result(path)
    except Exception as exc:  # noqa: BLE001
        print(f"[cache] {path.name}: unreadable ({type(exc).__name__}); recomputing", file=sys.stderr)
        return None
    return ds if ds.attrs.get("settings") == json.dumps(settings, sort_keys=True) else None


def run_variables(runs: dict) -> dict:
    """Variables of named CKA runs: the estimate ``key``, ``key_stderr`` and the
    leave-one-group-out matrices ``key_jackknife`` (own group dim)."""
    out = {}
    for key, res in runs.items():
        out[key] = res["cka"]
        out[f"{key}_stderr"] = res["stderr"]
        out[f"{key}_jackknife"] = res["jackknife"].rename(group=f"{key}_group")
    return out


def jackknife_view(ds, key="cka"):
    """The ``key`` run of an extract (or a cross result) as :func:`repsim.jackknife_interval` takes it."""
    import xarray as xr

    if key == "cka" and "jackknife" in ds:
        return ds
    rep = ds[f"{key}_jackknife"].rename({f"{key}_group": "group"})
    return xr.Dataset({"cka": ds[key], "jackknife": rep}, attrs={"level": ds.attrs.get("level", 0.9)})


def extract_one(spec, model, meta, data, cfg, out: Path, device, log=None):
    """Every within-model measurement of one model, cached as ``extract/<id>.nc``.

    CKA over the analysed layers (plain, per-batch PC1 removal, without the dominant
    examples), per-layer PC1 share and scores (:func:`repsim.layer_statistics`), test-set
    logits, and the follow-up control: local contrast of the declared block without the
    dominant ``dominant_fraction`` of examples (by ``|PC1 score|`` at the block's middle
    layer) and without ``random_removals`` random sets of the same size.
    """
    import xarray as xr

    path = out / "extract" / f"{spec['id']}.nc"
    settings = analysis_settings(cfg, spec)
    ds = cached(path, settings)
    if ds is not None:
        return ds
    t0 = time.perf_counter()
    names = layer_names(model, cfg)
    x = data["x_eval"]
    n = len(x)
    k = max(1, int(round(cfg["dominant_fraction"] * n)))
    seed = 7 + spec["seed"]
    stats = repsim.layer_statistics(model, x, names, top=k, device=device)
    runs = {"cka": within_model_cka(model, names, x, cfg, seed, device, name=spec["id"])}
    runs["cka_no_pc1"] = within_model_cka(model, names, x, cfg, seed, device, transform=remove_pc1, name=spec["id"])
    block, _ = declared_block(runs["cka"]["cka"].values, cfg)
    pc1 = stats["pc1_share"].values
    middle = (block[0] + block[1]) // 2 if block else int(np.nanargmax(pc1))
    removed = stats["dominant"].values[middle, :k]
    keep = np.setdiff1d(np.arange(n), removed)
    runs["cka_no_dominant"] = within_model_cka(model, names, x[keep], cfg, seed, device, name=spec["id"])
    control = {"plain": math.nan, "dominant": math.nan, "random": []}
    if block is not None and cfg["random_removals"]:
        lo, hi = window(len(names), block, cfg["block_neighbours"])
        sub, f, l = names[lo:hi + 1], block[0] - lo, block[1] - lo

        def local(xs):
            res = within_model_cka(model, sub, xs, cfg, seed, device, passes=cfg["control_passes"], name=spec["id"])
            return repsim.block_contrast(res["cka"], f, l, neighbours=cfg["block_neighbours"]).contrast

        rng = np.random.default_rng(100 + spec["seed"])
        control["plain"], control["dominant"] = local(x), local(x[keep])
        control["random"] = [local(x[np.setdiff1d(np.arange(n), rng.choice(n, k, replace=False))])
                             for _ in range(cfg["random_removals"])]
    logits = predict(model, x, device)
    ds = xr.Dataset(
        {
            **run_variables(runs),
            "pc1_share": ("layer", pc1),
            "pc1_scores": (("layer", "example"), stats["pc1_scores"].values),
            "logits": (("example", "class"), logits),
            "labels": ("example", data["y_eval"]),
            "random_removal_contrast": ("removal", np.asarray(control["random"], dtype=np.float64)),
        },
        coords={"layer": names, "class": data["classes"]},
    )
    save(ds, path, {
        "model": spec["id"], "depth": spec["depth"], "width": spec["width"], "seed": spec["seed"],
        "train_fraction": spec["train_fraction"], "dataset": cfg["dataset"],
        "test_accuracy": meta["test_accuracy"], "train_accuracy": meta["train_accuracy"],
        "estimator": "unbiased", "kernel": "linear", "measure": "minibatch_cka", "n_examples": n,
        "batch_size": cfg["cka_batch_size"], "passes": cfg["passes"], "cka_seed": seed, "layers": cfg["layers"],
        "level": cfg["level"], "interval_method": "delete-a-group jackknife over batch groups (measurement noise)",
        "block_rule": repsim.find_block(runs["cka"]["cka"], **block_options(cfg, len(names))).attrs["rule"],
        **{f"block_{k_}": v for k_, v in block_options(cfg, len(names)).items()},
        "dominant_layer": names[middle], "dominant_removed": removed.tolist(),
        "control_plain_contrast": control["plain"], "control_dominant_contrast": control["dominant"],
        "control_passes": cfg["control_passes"], "pc_removed": 1,
        "settings": json.dumps(settings, sort_keys=True), "repsim_version": repsim.__version__,
        "reference": "Nguyen, Raghu & Kornblith (2021), ICLR", "seconds": round(time.perf_counter() - t0, 2),
    })
    if log is not None:
        log(f"extract {spec['id']}: {len(names)} layers, block "
            f"{'none' if block is None else f'{names[block[0]]}..{names[block[1]]}'}, "
            f"{time.perf_counter() - t0:.0f} s")
    return repsim.load_result(path)


def cross_one(a, b, kind, models, cfg, data, out: Path, device, log=None):
    """Cross-model CKA of two models, cached as ``cross/<a>__<b>.nc``."""
    path = out / "cross" / f"{a['id']}__{b['id']}.nc"
    settings = analysis_settings(cfg, a, b)
    res = cached(path, settings)
    if res is not None:
        return res
    t0 = time.perf_counter()
    ma, mb = models[a["id"]], models[b["id"]]
    res = cross_model_cka(ma, mb, layer_names(ma, cfg), layer_names(mb, cfg), data["x_eval"], cfg, seed=11,
                          device=device, names=(a["id"], b["id"]))
    save(res, path, {"model_a": a["id"], "model_b": b["id"], "pair": kind, "passes": cfg["cross_passes"],
                     "batch_size": cfg["cka_batch_size"], "settings": json.dumps(settings, sort_keys=True),
                     "dataset": cfg["dataset"], "repsim_version": repsim.__version__,
                     "seconds": round(time.perf_counter() - t0, 2)})
    if log is not None:
        log(f"compare {a['id']} / {b['id']} ({kind}): {time.perf_counter() - t0:.0f} s")
    return repsim.load_result(path)


def cross_pairs(specs, block_ids=()) -> list[tuple[dict, dict, str]]:
    """Pairs for the cross-model analyses: every two seeds of one architecture, the lowest
    seeds of every two architectures trained on the main training fraction, and every
    model in ``block_ids`` (those with a declared block) against the lowest seed of each
    other architecture on that fraction (C4 counted over every seed with a block)."""
    pairs, by_arch = [], {}
    for s in specs:
        by_arch.setdefault((s["depth"], s["width"], s["train_fraction"]), []).append(s)
    for group in by_arch.values():
        group = sorted(group, key=lambda s: s["seed"])
        pairs += [(group[i], group[j], "seeds") for i in range(len(group)) for j in range(i + 1, len(group))]
    top = main_fraction(specs)
    first = {}
    for s in sorted(specs, key=lambda s: s["seed"]):
        if s["train_fraction"] == top:
            first.setdefault((s["depth"], s["width"]), s)
    base = sorted(first)
    pairs += [(first[p], first[q], "architectures") for i, p in enumerate(base) for q in base[i + 1:]]
    seen = {(a["id"], b["id"]) for a, b, _ in pairs}
    for s in specs:
        if s["id"] not in block_ids or s["train_fraction"] != top or first[(s["depth"], s["width"])] is s:
            continue
        for arch in base:
            other = first[arch]
            if arch == (s["depth"], s["width"]):
                continue
            a, b = sorted((s, other), key=lambda x: (x["depth"], x["width"]))  # the shallower model first
            if (a["id"], b["id"]) not in seen:
                pairs.append((a, b, "architectures"))
                seen.add((a["id"], b["id"]))
    return pairs


def outputs_one(spec, model, data, cfg, out: Path, device):
    """Logits of one model on the output images (``n_outputs``), cached as
    ``outputs/<id>.nc`` apart from the CKA extract, so that more test images for C5 never
    recompute the CKA."""
    import xarray as xr

    path = out / "outputs" / f"{spec['id']}.nc"
    settings = outputs_settings(cfg, spec)
    ds = cached(path, settings)
    if ds is not None:
        return ds
    ds = xr.Dataset({"logits": (("example", "class"), predict(model, data["x_out"], device)),
                     "labels": ("example", data["y_out"])}, coords={"class": data["classes"]})
    save(ds, path, {"model": spec["id"], "settings": json.dumps(settings, sort_keys=True),
                    "repsim_version": repsim.__version__})
    return repsim.load_result(path)


def write_extracts(folder: Path, extracts, crosses, outputs) -> None:
    """The run's reviewable extracts, small enough for git (a few MB), under ``folder``:
    per model ``<id>.nc`` (the CKA matrices plain, without PC1 and without the dominant
    examples, the CKA's standard error, the PC1 share per layer, the dominant examples'
    indices at the block's middle layer, predicted classes and labels on the output
    images) and ``cross/<a>__<b>.nc`` (cross-model CKA). Float32; no weights, no jackknife
    replicates, no PC scores. ``docs/scripts/rerun_block_rule.py`` and the claims read them."""
    import xarray as xr

    for mid, ds in extracts.items():
        o = outputs[mid]
        small = xr.Dataset(
            {**{k: ds[k].astype(np.float32) for k in ("cka", "cka_stderr", "cka_no_pc1", "cka_no_dominant",
                                                      "pc1_share")},
             "predicted": ("output_example", o["logits"].values.argmax(1).astype(np.int8)),
             "labels": ("output_example", o["labels"].values.astype(np.int8))},
            attrs={k: v for k, v in ds.attrs.items() if k != "settings"})
        repsim.save_result(small, folder / f"{mid}.nc")
    for (a, b, kind), res in crosses.items():
        small = xr.Dataset({"cka": res["cka"].astype(np.float32)},
                           attrs={k: v for k, v in res.attrs.items() if k != "settings"})
        repsim.save_result(small, folder / "cross" / f"{a}__{b}.nc")


def main_fraction(items) -> float:
    """The training fraction with the most architectures (ties: the larger fraction)."""
    archs = {}
    for s in items:
        archs.setdefault(s["train_fraction"], set()).add((s["depth"], s["width"]))
    return max(archs, key=lambda f: (len(archs[f]), f))
