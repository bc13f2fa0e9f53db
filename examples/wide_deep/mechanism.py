"""Mechanism measures of the declared block, from the stored models (issue 24, section 3).

What the block is made of, measured on the held-out images the CKA uses; one netCDF file
per model, ``mechanism/<id>.nc``, cached under the run's analysis settings and this stage's
own :data:`SETTINGS` (the extract's cache and the training settings are not touched):

1. **top-k PC removal** -- within-model minibatch CKA with the top ``k`` principal
   components of every layer removed per batch (the grams of :func:`repsim.remove_top_pcs`,
   :func:`pc_removed_cka`), ``k`` in ``SETTINGS["pc_ks"]``, and the plain CKA (``k = 0``)
   of the same batches; the inside CKA and local contrast (:func:`repsim.block_contrast`)
   of the declared block (found on the extract's plain matrix) at each ``k``, its change
   from ``k = 0`` with a paired jackknife interval, and the rule
   (:func:`repsim.find_block`) rerun on each matrix. One forward and one
   eigendecomposition per layer and batch serve every ``k``.
2. **branch / stream norms** -- at each residual block's sum ``F(x) + s(x)`` (``F``: the
   branch, conv-BN-ReLU-conv-BN, ending at ``bn2``; ``s``: the shortcut, identity or
   projection), the per-image ratio ``||F(x)|| / ||s(x)||`` (every unit of the map),
   averaged over the images; and the mean ``|gamma|`` of ``bn2``, the branch's last BN.
   Inside vs outside (all blocks, and the rest of the span's stages) over the
   identity-shortcut blocks: at a stage's first, projection block ``s(x)`` is not the
   stream.
3. **linear probes** -- per analysed layer, spatially mean-pooled outputs ``(n, channels)``,
   standardised, a ridge classifier (scikit-learn's, :func:`ridge_probe`) fitted on a
   seeded ``probe_train_share`` of the images and scored on the rest.
4. **dominant examples** -- the extract's ``dominant_removed`` (top ``|PC1 score|`` at the
   block's middle layer): a figure of the images and their overlap across seeds
   (:func:`dominant_overlap`, Jaccard against its chance distribution); no cache needed.
5. **the dominant-example control in block-free models** -- the follow-up's removal (the
   top ``dominant_fraction`` by ``|PC1 score|`` at the middle layer against
   ``random_removals`` random sets) on the layers at the blocks' relative depth
   (:func:`exact.window_layers` of the run's control window, at least two layers).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

import repsim

from . import exact
from .analyse import (
    block_options, cached, declared_block, jackknife_view, layer_names, run_variables, save, window,
    within_model_cka,
)
from .analyse import n_groups as analyse_n_groups
from .config import analysis_settings
from .summaries import finite, interval

#: This stage's own settings (part of its cache key; no config key reads them).
SETTINGS = {
    "pc_ks": [1, 2, 3, 4, 5],  # top-k PCs removed per batch (k = 0, the plain CKA, beside them)
    "probe_ridge": 10.0,  # ridge penalty on standardised features (sum-of-squares loss)
    "probe_train_share": 0.5,  # share of the held-out images the probe is fitted on
    "probe_seed": 0,  # the seeded split into probe-fit and probe-score images
    "forward_batch": 250,  # images per forward pass of the norm and probe hooks
}


def pc_removed_cka(model, names, x, cfg, seed, device, ks, batch_size=None):
    """Minibatch CKA of every pair of ``names`` after removing each layer's top ``k``
    principal components per batch, for every ``k`` in ``ks`` at once.

    One forward per batch: each layer's output ``(n, features)`` is centred, its gram
    ``G = x_c x_cᵀ`` formed (float32, as the plain CKA forms it) and
    :func:`repsim.pc_removed_grams` gives the gram after removing the top ``k`` components
    for every ``k`` from one eigendecomposition -- the gram of :func:`repsim.remove_top_pcs`
    ``(x, k=k)`` (a ``k`` beyond the batch's rank removes everything). The grams go to one
    :class:`repsim.MinibatchCKA` (unbiased, jackknife groups as :func:`analyse.n_groups`)
    per ``k``; ``k = 0`` is the plain CKA of the same batches, so changes are paired. ``passes`` shuffled passes (a seeded permutation per
    pass, a tail of fewer than 4 images dropped).

    Returns
    -------
    dict
        ``{k: Dataset}`` with ``cka``, ``stderr`` and ``jackknife`` (as
        :meth:`repsim.MinibatchCKA.compute` with ``uncertainty=True``).
    """
    import torch

    n, bs = len(x), batch_size or cfg["cka_batch_size"]
    groups = analyse_n_groups(n, cfg, cfg["passes"])
    accs = {k: repsim.MinibatchCKA(estimator="unbiased", groups=groups) for k in sorted({0, *ks})}
    captured = {}

    def hook(name):
        def fn(module, inputs, output):
            captured[name] = output.detach().flatten(1).float()
        return fn

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    rng = np.random.default_rng(seed)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for _ in range(cfg["passes"]):
                perm = rng.permutation(n)
                for i in range(0, n, bs):
                    idx = perm[i:i + bs]
                    if len(idx) < 4:
                        continue
                    model(torch.from_numpy(np.ascontiguousarray(x[idx])).to(device))
                    removed = {}
                    for name in names:
                        z = captured.pop(name)
                        z = z - z.mean(0)  # centred before its float32 gram is formed
                        removed[name] = repsim.pc_removed_grams((z @ z.T).cpu().numpy(), list(accs))
                    for k, acc in accs.items():
                        acc.update_grams({name: grams[k] for name, grams in removed.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: acc.compute(uncertainty=True, level=cfg["level"]) for k, acc in accs.items()}


def forward_measures(model, names, x, device, batch=250):
    """One pass of ``x`` through ``model`` (eval mode, no gradients) with forward hooks.

    Parameters
    ----------
    model : repsim.models.CifarResNet (any module with :class:`repsim.models.BasicBlock`)
    names : list of str
        Analysed layers; their outputs are averaged over space (``(n, c, h, w)`` ->
        ``(n, c)``; 2-D outputs are kept).
    x : array, shape (n, channels, h, w)

    Returns
    -------
    dict
        ``pooled``: ``{name: (n, c) float64}``; ``blocks``: the residual blocks' dotted
        names; ``branch``, ``stream``: ``(n_blocks, n)`` per-image L2 norms of the branch
        ``F(x)`` (``bn2``'s output) and of the shortcut ``s(x)`` at each block's sum;
        ``gamma``: ``(n_blocks,)`` mean ``|bn2.weight|``; ``projection``: ``(n_blocks,)``
        True where the shortcut is a projection (conv + BN), not the identity.
    """
    import torch

    from repsim.models import BasicBlock

    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, BasicBlock)]
    pooled = {n: [] for n in names}
    branch = {n: [] for n, _ in blocks}
    stream = {n: [] for n, _ in blocks}

    def keep(store, key, fn):
        return lambda module, inputs, output: store[key].append(fn(output.detach().double()).cpu().numpy())

    def pool(t):
        return t.mean(dim=tuple(range(2, t.ndim))) if t.ndim > 2 else t

    def norm(t):
        return t.flatten(1).norm(dim=1)

    handles = [model.get_submodule(n).register_forward_hook(keep(pooled, n, pool)) for n in names]
    for n, m in blocks:
        handles.append(m.bn2.register_forward_hook(keep(branch, n, norm)))
        handles.append(m.shortcut.register_forward_hook(keep(stream, n, norm)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    cat = np.concatenate
    return {"pooled": {n: cat(v) for n, v in pooled.items()}, "blocks": [n for n, _ in blocks],
            "branch": np.stack([cat(branch[n]) for n, _ in blocks]) if blocks else np.zeros((0, len(x))),
            "stream": np.stack([cat(stream[n]) for n, _ in blocks]) if blocks else np.zeros((0, len(x))),
            "gamma": np.array([float(m.bn2.weight.detach().abs().mean()) for _, m in blocks]),
            "projection": np.array([not isinstance(m.shortcut, torch.nn.Identity) for _, m in blocks], dtype=bool)}


def ridge_probe(x_fit, y_fit, x_score, y_score, ridge) -> tuple[float, float]:
    """Accuracy of a ridge linear classifier on the fit and on the held-out images:
    scikit-learn's ``StandardScaler`` + ``RidgeClassifier(alpha=ridge)`` fitted on
    ``(x_fit, y_fit)``, float64.

    Returns
    -------
    (fit accuracy, held-out accuracy)
    """
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xf, xs = np.asarray(x_fit, dtype=np.float64), np.asarray(x_score, dtype=np.float64)
    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=ridge)).fit(xf, y_fit)
    return (float(np.mean(clf.predict(xf) == np.asarray(y_fit))),
            float(np.mean(clf.predict(xs) == np.asarray(y_score))))


def probe_split(n, share, seed):
    """``(fit, score)`` indices: a seeded permutation of ``range(n)`` cut at ``share``."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = min(n - 1, max(1, int(round(share * n))))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def span_of(names, block, window_):
    """The analysed layers the mechanism compares inside vs outside: the declared block
    ``(first, last)``, else the layers at the blocks' relative depth ``window_`` (at least
    two: a one-layer span has no inside CKA); ``(first, last, kind)`` or None."""
    if block is not None:
        return block[0], block[1], "block"
    if window_ is None or len(names) < 2:
        return None
    layers = exact.window_layers(window_, len(names))
    f, l = int(layers[0]), int(layers[-1])
    if f == l:
        f, l = (f - 1, l) if f > 0 else (f, l + 1)
    return f, l, "window"


def output_layer(names, block):
    """Position in ``names`` of the residual block's output (``block`` or
    ``block.relu2``), or -1 when it is not analysed."""
    for n in (block, f"{block}.relu2"):
        if n in names:
            return names.index(n)
    return -1


def dominant_control(model, names, ext, x, cfg, seed, span, device, name):
    """Local contrast of ``span`` on every image, without the top ``dominant_fraction`` by
    ``|PC1 score|`` at its middle layer, and without ``random_removals`` random sets of the
    same size: the follow-up's design and seeds (:func:`analyse.extract_one`; ``seed`` is
    the model's)."""
    f, l = span
    n = len(x)
    k = max(1, int(round(cfg["dominant_fraction"] * n)))
    scores = ext["pc1_scores"].values[(f + l) // 2]
    removed = np.argsort(-np.abs(scores), kind="stable")[:k]
    keep = np.setdiff1d(np.arange(n), removed)
    lo, hi = window(len(names), (f, l), cfg["block_neighbours"])

    def local(xs):
        res = within_model_cka(model, names[lo:hi + 1], xs, cfg, 7 + seed, device, passes=cfg["control_passes"],
                               name=name)
        return repsim.block_contrast(res["cka"], f - lo, l - lo, neighbours=cfg["block_neighbours"]).contrast

    rng = np.random.default_rng(100 + seed)
    randoms = [local(x[np.setdiff1d(np.arange(n), rng.choice(n, k, replace=False))])
               for _ in range(cfg["random_removals"])]
    return local(x), local(x[keep]), np.asarray(randoms, dtype=np.float64), removed


def mechanism_one(spec, model, meta, data, cfg, out: Path, device, log=None, *, extract, window_=None):
    """Every mechanism measure of one model, cached as ``mechanism/<id>.nc``.

    ``extract`` is the model's :func:`analyse.extract_one` result; ``window_`` the run's
    control window (:func:`summaries.block_window`), used only when the model has no block
    (its cache key holds it then).
    """
    import xarray as xr

    del meta  # the extract holds the model's metrics
    names = layer_names(model, cfg)
    block, _ = declared_block(extract["cka"].values, cfg)
    settings = {**analysis_settings(cfg, spec), "mechanism": SETTINGS,
                "window": None if block is not None else window_}
    path = out / "mechanism" / f"{spec['id']}.nc"
    ds = cached(path, settings)
    if ds is not None:
        return ds
    t0 = time.perf_counter()
    x, y = data["x_eval"], np.asarray(data["y_eval"])
    seed = 7 + spec["seed"]
    runs = {f"cka_pc{k}": res for k, res in pc_removed_cka(model, names, x, cfg, seed, device,
                                                             SETTINGS["pc_ks"]).items()}
    fm = forward_measures(model, names, x, device, SETTINGS["forward_batch"])
    fit_idx, score_idx = probe_split(len(x), SETTINGS["probe_train_share"], SETTINGS["probe_seed"])
    probes = np.array([ridge_probe(fm["pooled"][n][fit_idx], y[fit_idx], fm["pooled"][n][score_idx], y[score_idx],
                                   SETTINGS["probe_ridge"]) for n in names])
    span = span_of(names, block, window_)
    attrs = {"control_first": -1, "control_last": -1, "control_plain_contrast": math.nan,
             "control_dominant_contrast": math.nan, "control_removed": []}
    randoms = np.zeros(0)
    if block is None and span is not None and cfg["random_removals"]:
        plain, dom, randoms, removed = dominant_control(model, names, extract, x, cfg, spec["seed"], span[:2],
                                                        device, spec["id"])
        attrs.update(control_first=span[0], control_last=span[1], control_plain_contrast=plain,
                     control_dominant_contrast=dom, control_removed=removed.tolist())
    ds = xr.Dataset(
        {**run_variables(runs),
         "probe_fit_accuracy": ("layer", probes[:, 0]), "probe_accuracy": ("layer", probes[:, 1]),
         "branch_norm": ("residual_block", fm["branch"].mean(1)),
         "stream_norm": ("residual_block", fm["stream"].mean(1)),
         "branch_ratio": ("residual_block", (fm["branch"] / fm["stream"]).mean(1)),
         "bn2_gamma": ("residual_block", fm["gamma"]),
         "projection": ("residual_block", fm["projection"].astype(np.int8)),
         "output_layer": ("residual_block", np.array([output_layer(names, b) for b in fm["blocks"]], dtype=np.int64)),
         "control_random_contrast": ("removal", randoms)},
        coords={"layer": names, "residual_block": fm["blocks"]})
    save(ds, path, {
        "model": spec["id"], "pc_ks": SETTINGS["pc_ks"], "cka_seed": seed, "passes": cfg["passes"],
        "probe": "scikit-learn RidgeClassifier on spatially mean-pooled, standardised layer outputs",
        "probe_ridge": SETTINGS["probe_ridge"], "probe_n_fit": len(fit_idx), "probe_n_score": len(score_idx),
        "branch_ratio_definition": "mean over images of ||bn2 output|| / ||shortcut output|| at each block's sum",
        **attrs, "settings": json.dumps(settings, sort_keys=True), "repsim_version": repsim.__version__,
        "seconds": round(time.perf_counter() - t0, 2)})
    if log is not None:
        log(f"mechanism {spec['id']}: {len(names)} layers, {len(fm['blocks'])} residual blocks, "
            f"{time.perf_counter() - t0:.0f} s")
    return repsim.load_result(path)


def _in_out(values, positions, span):
    """Means of ``values`` at ``positions`` inside ``span`` and outside it (None if empty)."""
    positions = np.asarray(positions)
    ok = positions >= 0
    inside = ok & (positions >= span[0]) & (positions <= span[1])
    return (finite(np.mean(values[inside])) if inside.any() else None,
            finite(np.mean(values[ok & ~inside])) if (ok & ~inside).any() else None)


def mechanism_summary(entry, ext, mech, cfg, window_=None) -> dict:
    """The ``mechanism`` entry of one model in ``summary.json`` (see :func:`mechanism_one`)."""
    names = [str(n) for n in ext["layer"].values]
    b = entry["block"]
    span = span_of(names, None if b is None else (b["first"], b["last"]), window_)
    nb = cfg["block_neighbours"]
    opts = block_options(cfg, len(names))
    ks = [0] + [int(k) for k in np.atleast_1d(mech.attrs["pc_ks"])]
    out = {"span": None if span is None else {"first": span[0], "last": span[1], "kind": span[2]},
           "pc_removal": [], "dissolves_at_k": None}
    plain = jackknife_view(mech, "cka_pc0")  # the same batches as every k: paired changes
    for k in ks:
        key = f"cka_pc{k}"
        sim = mech[key].values
        found, _ = declared_block(sim, cfg)
        row = {"k": k, "rule_block": None if found is None else list(found)}
        if span is not None:
            def con(m, f=span[0], l=span[1]):
                return repsim.block_contrast(m, f, l, neighbours=nb)
            c = con(sim)
            row.update(inside=finite(c.inside), local_contrast=finite(c.contrast),
                       passes=bool(c.inside >= opts["min_inside"] and c.contrast >= opts["min_contrast"]),
                       contrast_change=None if k == 0 else interval(
                           [plain, jackknife_view(mech, key)], lambda a, r: con(r).contrast - con(a).contrast))
            if span[2] == "block" and k and not row["passes"] and out["dissolves_at_k"] is None:
                out["dissolves_at_k"] = k
        out["pc_removal"].append(row)
    # identity-shortcut blocks only: at a projection block s(x) is not the stream itself
    pos = np.where(mech["projection"].values == 0, mech["output_layer"].values, -1)
    stage = np.array([str(n).split(".")[0] for n in mech["residual_block"].values])
    ratio, gamma = mech["branch_ratio"].values, mech["bn2_gamma"].values
    out["residual"] = {"blocks": [str(n) for n in mech["residual_block"].values],
                       "projection": [bool(v) for v in mech["projection"].values],
                       "branch_ratio": [finite(v) for v in ratio], "bn2_gamma": [finite(v) for v in gamma]}
    if span is not None:
        inside = (pos >= span[0]) & (pos <= span[1])
        same = np.isin(stage, stage[inside]) & (pos >= 0)
        for key, vals in (("branch_ratio", ratio), ("bn2_gamma", gamma)):
            out["residual"][f"{key}_in"], out["residual"][f"{key}_out"] = _in_out(vals, pos, span)
            out["residual"][f"{key}_out_same_stage"] = _in_out(vals, np.where(same, pos, -1), span)[1]
    acc = mech["probe_accuracy"].values
    n_score = int(mech.attrs["probe_n_score"])
    out["probe"] = {"accuracy": [finite(v) for v in acc], "n_fit": int(mech.attrs["probe_n_fit"]),
                    "n_score": n_score, "ridge": float(mech.attrs["probe_ridge"])}
    if span is not None:
        f, l = span[:2]
        p = float(np.mean(acc[f:l + 1]))
        se = math.sqrt(2 * p * (1 - p) / n_score)  # of a difference of two accuracies, unpaired
        steps = np.diff(acc)  # steps[i]: layer i -> i + 1
        in_steps = steps[f:l]
        out_steps = np.delete(steps, np.arange(max(0, f - 1), min(l + 1, steps.size)))  # both ends outside
        out["probe"].update(
            before=finite(acc[f - 1]) if f > 0 else None, first=finite(acc[f]), last=finite(acc[l]),
            after=finite(acc[l + 1]) if l + 1 < len(acc) else None, gain_in=finite(acc[l] - acc[f]),
            se_difference=finite(se), flat=bool(abs(acc[l] - acc[f]) <= 2 * se),
            gain_per_layer_in=finite(np.mean(in_steps)) if in_steps.size else None,
            gain_per_layer_out=finite(np.mean(out_steps)) if out_steps.size else None)
    if b is None and mech.attrs["control_first"] >= 0 and mech["control_random_contrast"].size:
        plain_c, dom_c = mech.attrs["control_plain_contrast"], mech.attrs["control_dominant_contrast"]
        drops = plain_c - mech["control_random_contrast"].values
        out["dominant_control"] = {
            "first": int(mech.attrs["control_first"]), "last": int(mech.attrs["control_last"]),
            "removed": int(len(np.atleast_1d(mech.attrs["control_removed"]))), "contrast": finite(plain_c),
            "dominant_drop": finite(plain_c - dom_c), "random_drop_mean": finite(np.nanmean(drops)),
            "random_drop_p95": finite(np.nanpercentile(drops, 95)), "n_random": int(drops.size),
            "beats_p95": bool(np.isfinite(plain_c - dom_c) and plain_c - dom_c > np.nanpercentile(drops, 95))}
    return out


def jaccard_chance(n, k) -> dict:
    """Two independent uniform ``k``-subsets of ``n`` images: their intersection ``I`` is
    hypergeometric; returns ``E[I] = k²/n`` and ``E[I / (2k - I)]`` (the expected Jaccard)."""
    from scipy.stats import hypergeom

    i = np.arange(0, k + 1)
    pmf = hypergeom.pmf(i, n, k, k)
    return {"expected_intersection": k * k / n, "expected_jaccard": float(np.sum(pmf * i / (2 * k - i)))}


def dominant_overlap(models, extracts) -> list[dict]:
    """Every seed pair of one architecture and training fraction: the overlap of their
    dominant sets (the extract's ``dominant_removed``), Jaccard against two random sets of
    the same size (:func:`jaccard_chance`), and the hypergeometric ``P(I >= observed)``."""
    from scipy.stats import hypergeom

    groups, rows = {}, []
    for m in models:
        groups.setdefault((m["depth"], m["width"], m["train_fraction"]), []).append(m)
    for group in groups.values():
        group = sorted(group, key=lambda m: m["seed"])
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                ea, eb = extracts[a["id"]], extracts[b["id"]]
                sa = set(np.atleast_1d(ea.attrs["dominant_removed"]).tolist())
                sb = set(np.atleast_1d(eb.attrs["dominant_removed"]).tolist())
                n, k = int(ea.attrs["n_examples"]), len(sa)
                inter = len(sa & sb)
                rows.append({"model_a": a["id"], "model_b": b["id"], "layer_a": ea.attrs["dominant_layer"],
                             "layer_b": eb.attrs["dominant_layer"],
                             "both_block": a["block"] is not None and b["block"] is not None, "n": n, "k": k,
                             "intersection": inter, "jaccard": finite(inter / len(sa | sb)),
                             **{key: finite(v) for key, v in jaccard_chance(n, k).items()},
                             "p": finite(float(hypergeom.sf(inter - 1, n, k, k)), 6)})
    return rows
