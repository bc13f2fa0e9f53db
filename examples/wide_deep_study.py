#!/usr/bin/env python
"""Do wide and deep networks learn the same things? The study, end to end.

Trains a grid of CIFAR-style ResNets (depth ``6n+2`` x width multiplier x seed x training
fraction) and reproduces the analyses of Nguyen, Raghu & Kornblith (ICLR 2021) with
repsim's public API. Read :func:`main` top to bottom; each stage names the repsim calls it
makes, and the package ``examples/wide_deep/`` holds the longer pieces.

1. **data** -- :func:`repsim.datasets.load_digits_images` (default) or
   :func:`repsim.datasets.load_cifar10`; a seeded, class-stratified training subset.
2. **train** -- :func:`repsim.models.cifar_resnet`; SGD with warm-up and cosine; each
   model's weights, settings and metrics are one record written by
   :func:`repsim.save_result` (atomic), so a rerun never retrains a finished model and a
   kill can never pair weights with another setting.
3. **within-model CKA** -- :func:`repsim.compare_models` over every analysed layer
   (:func:`repsim.models.layer_names`), minibatch CKA with jackknife groups; again with
   :func:`repsim.remove_top_pcs` as a per-batch transform, and without the dominant
   examples.
4. **blocks** -- :func:`repsim.find_block` (the declared block: optimal segmentation,
   the largest local contrast among runs passing declared thresholds),
   :func:`repsim.block_sensitivity`, :func:`repsim.block_contrast`; the PC1 view
   :func:`repsim.pc1_runs`.
5. **PCs** -- :func:`repsim.layer_statistics` (PC1 share, scores, dominant examples per
   layer through hooks); the follow-up removes the top 1% by ``|PC1 score|`` at the
   block's middle layer against random 1% removals.
6. **cross-model** -- :func:`repsim.compare_models` with two models: seeds and
   architectures.
7. **outputs** -- per-example disagreement and per-class McNemar tests for an
   accuracy-matched wide and deep pair, seeds as units (:func:`repsim.compare_seeds`).
8. **mechanism** -- from the stored models (``examples/wide_deep/mechanism.py``): CKA with
   the top k = 1..5 PCs removed per batch (:func:`repsim.remove_top_pcs`) and the block's
   contrast at each k; the residual branch/stream norm ratio and the last BN's gamma per
   residual block; per-layer ridge probes on mean-pooled outputs; the dominant images and
   their overlap across seeds; the dominant-example control at the blocks' relative depth
   in block-free models.
9. **report** -- the claims with their pre-declared criteria, met or not, with numbers
   (``report.md``, ``summary.json``, ``figures/``: every heatmap, and the paper's depth
   series, width series and training fraction x capacity grid); :func:`repsim.aggregate_seeds`.
   A recipe check (a sub-grid's own ``weight_decay`` or ``min_steps``) is compared with its
   standard twin and counted in no seed statistic.

Usage
-----
::

    python examples/wide_deep_study.py                      # default: sklearn digits, <= 10 min on 2 cores
    python examples/wide_deep_study.py --smoke --out /tmp/s # every stage on tiny models, seconds
    python examples/wide_deep_study.py --from-summary docs/study/cifar10_cpu  # claims and report, no models
    python examples/wide_deep_study.py --dataset cifar10 --data-dir ../shared/data/cifar-10-batches-py \\
        --config examples/wide_deep_configs/cifar10_cpu.json

Every bad argument is refused before any model trains. Stages cache their outputs under
``--out``; the log shows one line per model and stage (no progress bars, no escape codes).

References
----------
Nguyen, T., Raghu, M. and Kornblith, S. (2021). Do wide and deep networks learn the same
things? Uncovering how neural network representations vary with width and depth. ICLR.

He, K., Zhang, X., Ren, S. and Sun, J. (2016). Deep residual learning for image
recognition. CVPR.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the study's package, examples/wide_deep
try:  # running from a source checkout without installing
    import repsim
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent))
    import repsim

from repsim.results import atomic_write  # noqa: E402
from wide_deep.analyse import (  # noqa: E402
    block_options, cross_one, cross_pairs, extract_one, outputs_one, write_extracts,
)
from wide_deep.claims import findings, headline, verdicts_by_threshold  # noqa: E402
from wide_deep.config import build_config, deviations, model_specs, parse_args, standard  # noqa: E402
from wide_deep.mechanism import SETTINGS as MECHANISM_SETTINGS  # noqa: E402
from wide_deep.mechanism import dominant_overlap, mechanism_one, mechanism_summary  # noqa: E402
from wide_deep.mechanism_report import dominant_figure  # noqa: E402
from wide_deep.report import console_lines, make_figures, write_report  # noqa: E402
from wide_deep.summaries import (  # noqa: E402
    arch_pair_summary, block_window, model_summary, output_summary, seed_aggregates, seed_pair_summary,
)

#: The layout of summary.json: 2 since issue 24 (headline, verdicts by fit threshold, C4
#: controls, C5 with models as units; the extracts beside it).
SCHEMA = 2
from wide_deep.train import load_data, train_one  # noqa: E402


def log(text: str) -> None:
    """One line per model and stage, flushed: readable live and in a redirected log."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically with :func:`repsim.results.atomic_write` (a temporary
    file beside ``path``, flushed, then renamed over it)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _json(obj) -> str:
    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.dumps(obj, indent=2, default=default) + "\n"


def portable_command(argv) -> str:
    """The command line without machine-specific paths.

    ``--out`` is dropped, ``--data-dir`` becomes ``PATH``, and an absolute ``--config`` path
    is written relative to the working directory when it lies below it (else ``PATH/name``).
    """
    out, argv = [], list(argv)
    while argv:
        w = argv.pop(0)
        flag, eq, value = w.partition("=")
        if flag in ("--out", "--data-dir", "--config") and not eq:
            value = argv.pop(0) if argv else ""
        if flag == "--out":
            continue
        if flag == "--data-dir":
            out.append("--data-dir PATH")
        elif flag == "--config":
            if os.path.isabs(value):
                rel = os.path.relpath(value)
                value = rel if not rel.startswith("..") else "PATH/" + os.path.basename(value)
            out.append(f"--config {value}")
        elif w != "--no-progress":
            out.append(w)
    return " ".join(out)


def data_text(cfg, data) -> str:
    n_train, n_eval = len(data["y_train"]), len(data["y_eval"])
    if cfg["dataset"] == "digits":
        return (f"scikit-learn 8x8 digits, {n_train} training / {n_eval} held-out images (seeded split, seed "
                f"{cfg['split_seed']}), standardised, no augmentation")
    return (f"CIFAR-10 at {cfg['image_size']}x{cfg['image_size']} px, {n_train} training images (before the "
            f"training fraction), {n_eval} test images (seeded subset)")


def from_summary(folder: Path) -> int:
    """Rewrite ``folder/summary.json``'s seed statistics, headline, claims and verdicts by
    fit threshold, and ``folder/report.md``, from the stored summary alone: no data, no
    models, no training; the figures stay as they are. The run's own config (stored in the
    summary) decides; ``calibrated_on`` is taken from the config file its command names
    when the summary predates it."""
    summary = json.loads((folder / "summary.json").read_text())
    if any("fits" not in m for m in summary.get("models", [])):  # layout before issue 12
        raise SystemExit(f"{folder / 'summary.json'} predates the study's claims (issue 12: no fit "
                         "status per model, the previous block rule); its report stays as its run "
                         "wrote it -- rerun the run's command to analyse it with this code")
    cfg = dict(summary["config"])
    if "calibrated_on" not in cfg:
        words = summary.get("command", "").split()
        path = Path(words[words.index("--config") + 1]) if "--config" in words else None
        cfg["calibrated_on"] = (json.loads(path.read_text()).get("calibrated_on", [])
                                if path is not None and path.is_file() else [])
    summary["config"] = cfg
    summary["deviations"] = deviations(cfg)
    summary["seed_aggregates"] = seed_aggregates(summary["models"], cfg["level"])
    summary["headline"] = headline(summary, cfg)
    summary["findings"] = findings(summary, cfg)
    summary["verdicts_by_fit_threshold"] = verdicts_by_threshold(summary, cfg)
    summary["regenerated_from_summary"] = (f"statistics, claims and report rewritten from this summary by "
                                           f"--from-summary (repsim {repsim.__version__}); numbers of the run "
                                           "itself unchanged")
    write_text(folder / "summary.json", _json(summary))
    write_text(folder / "report.md", write_report(summary, summary.get("figures", {}), cfg, folder))
    log(f"report: {folder / 'report.md'} (from {folder / 'summary.json'})")
    for line in console_lines(summary):
        print("  " + line, flush=True)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --- configuration: every setting is checked here, before any model trains
    args = parse_args(argv)
    if args.from_summary is not None:
        return from_summary(args.from_summary)
    cfg = build_config(args)
    default_out = "wide_deep_smoke" if args.smoke else (
        "wide_deep" if cfg["dataset"] == "digits" else f"wide_deep_{cfg['dataset']}")
    out = args.out or Path("runs") / default_out
    out.mkdir(parents=True, exist_ok=True)
    import torch

    threads = cfg["threads"] or min(8, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(cfg["device"])
    t_start = time.perf_counter()
    write_text(out / "config.json", _json(cfg))

    # --- 1. data
    data = load_data(cfg, progress=not args.no_progress)
    specs = model_specs(cfg)
    log(f"{len(specs)} models on {data_text(cfg, data)}; output in {out}")

    # --- 2. train (or load each finished record)
    models, metas = {}, {}
    trained_now = 0
    for spec in specs:
        models[spec["id"]], metas[spec["id"]] = train_one(spec, data, cfg, out, log)
        if metas[spec["id"]]["resumed"]:
            log(f"train {spec['id']}: loaded (trained with these settings)")
        trained_now += not metas[spec["id"]]["resumed"]
        if args.stop_after is not None and trained_now >= args.stop_after:
            log(f"stopped after training {trained_now} model(s) (--stop-after)")
            return 3

    # --- 3-5. within-model CKA, the declared block, PCs and dominant examples, per model
    extracts = {s["id"]: extract_one(s, models[s["id"]], metas[s["id"]], data, cfg, out, device, log)
                for s in specs}

    entries = {s["id"]: model_summary(s, metas[s["id"]], extracts[s["id"]], cfg) for s in specs}
    for s in specs:  # a recipe check (its own weight decay or steps) is marked: never a seed
        if s.get("recipe"):
            entries[s["id"]]["recipe"] = dict(s["recipe"])
    outputs = {s["id"]: outputs_one(s, models[s["id"]], data, cfg, out, device) for s in specs}

    # --- 6. cross-model CKA: seeds of one architecture, architectures, and every model
    #        with a block against each other architecture (recipe checks take no part)
    seeds = standard(entries.values())
    block_ids = {e["id"] for e in seeds if e["block"] is not None and e["fits"]}
    crosses = {(a["id"], b["id"], kind): cross_one(a, b, kind, models, cfg, data, out, device, log)
               for a, b, kind in cross_pairs(standard(specs), block_ids)}

    # --- 7. mechanism, from the stored models: top-k PC removal, branch/stream norms and
    #        BN gammas, linear probes; in block-free models the dominant-example control
    #        at the blocks' relative depth (``window``, also the controls' window below)
    window = block_window(seeds)
    mechs = {s["id"]: mechanism_one(s, models[s["id"]], metas[s["id"]], data, cfg, out, device, log,
                                    extract=extracts[s["id"]], window_=window) for s in specs}
    for s in specs:
        entries[s["id"]]["mechanism"] = mechanism_summary(entries[s["id"]], extracts[s["id"]], mechs[s["id"]], cfg,
                                                          window)

    # --- 8. summaries: per model, seeds, architectures (block-free ones at the blocks'
    #        relative depth: the controls), outputs with models as units
    by_id = {s["id"]: s for s in specs}
    any_extract = next(iter(extracts.values()))
    summary = {
        "schema": SCHEMA, "dataset": cfg["dataset"], "data": data_text(cfg, data),
        "n_eval": int(len(data["y_eval"])), "n_outputs": int(len(data["y_out"])),
        "command": portable_command(argv), "config": cfg, "deviations": deviations(cfg),
        "layers": cfg["layers"], "block_rule": repsim.find_block(
            any_extract["cka"], **block_options(cfg, any_extract["cka"].shape[0])).attrs["rule"],
        "torch_threads": threads, "models": list(entries.values()), "control_window": window,
        "cross_seed": [seed_pair_summary(by_id[a], by_id[b], res, entries, cfg["edge_layers"], window)
                       for (a, b, kind), res in crosses.items() if kind == "seeds"],
        "cross_architecture": [arch_pair_summary(a, b, res, entries, cfg["edge_layers"], window)
                               for (a, b, kind), res in crosses.items() if kind == "architectures"],
        "outputs": output_summary(seeds, {i: o["logits"].values for i, o in outputs.items()},
                                  data["y_out"], data["classes"], cfg["level"]),
        "train_seconds": round(sum(m["train_seconds"] for m in metas.values()), 1),
        "mechanism": {"settings": MECHANISM_SETTINGS,
                      "dominant_overlap": dominant_overlap(seeds, extracts)},
    }
    summary["seed_aggregates"] = seed_aggregates(summary["models"], cfg["level"])
    timed = [ds.attrs.get("seconds") for ds in [*extracts.values(), *mechs.values(), *crosses.values()]]
    summary["analysis_seconds"] = round(float(sum(timed)), 1)
    write_extracts(out / "extracts", extracts, crosses, outputs)

    # --- 9. the claims (continuous statistics first), the figures and the report
    summary["headline"] = headline(summary, cfg)
    summary["findings"] = findings(summary, cfg)
    summary["verdicts_by_fit_threshold"] = verdicts_by_threshold(summary, cfg)
    figs = make_figures(extracts, crosses, summary, out)
    dominant = dominant_figure(summary["models"], extracts, data, out)
    if dominant is not None:
        figs["dominant_images"] = dominant
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["figures"] = figs
    write_text(out / "summary.json", _json(summary))
    write_text(out / "report.md", write_report(summary, figs, cfg, out))
    log(f"report: {out / 'report.md'} ({summary['wall_seconds']:.0f} s)")
    for line in console_lines(summary):
        print("  " + line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
