"""Configuration of the study: defaults, config files, flags, and checks before any training."""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

#: Every key a config file may hold. ``grids`` is a list of sub-grids; the study's models
#: are the union of their products depths x widths x seeds x train_fractions. A sub-grid
#: may hold its own ``epochs`` (e.g. a larger training fraction trained to fit); it is
#: stored with those models' weights and declared in the report. A sub-grid may also hold
#: its own ``weight_decay`` or ``min_steps`` (:data:`RECIPE_KEYS`): a *recipe check*, whose
#: models carry the override in their id (``_wd0p0002``, ``_st5000``) and are compared with
#: their standard twin, never counted as seeds.
DEFAULT_CONFIG = {
    "dataset": "digits",
    "data_dir": None,
    "digits_test_size": 500,
    "split_seed": 0,
    "image_size": None,  # CIFAR-10: 32, or 16 (2x2 average pooling); digits stay 8x8
    "n_eval": 1000,  # held-out images for the analyses
    "n_outputs": None,  # test images for the output analyses (C5); None: the n_eval images
    "grids": [  # three seeds of the smallest and the largest model
        {"depths": [20, 110], "widths": [1], "seeds": [0, 1, 2], "train_fractions": [1.0]},
    ],
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.02,  # 0.05 diverged mid-training in ResNet-110 (docs/study/README.md)
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_fraction": 0.25,  # linear warm-up over this share of the steps, then cosine to zero
    "augment": False,  # crop + horizontal flip (on for CIFAR-10)
    "crop_padding": 4,
    "min_steps": 0,  # reduced-data models train at least this many steps (epochs scaled up)
    "fit_threshold": 0.99,  # train accuracy below this: marked, excluded from verdicts
    # model ids the declared block thresholds were calibrated on (pilot runs of the same
    # recipe): the report calls them near in-sample and the other seeds out-of-sample
    "calibrated_on": [],
    "cka_batch_size": 250,
    "passes": 4,
    "layers": "relu",  # repsim.models.layer_names kind: "all", "relu" or "blocks"
    # the declared block (repsim.find_block, its defaults): the penalty is in units of
    # 1 - CKA and serves every number of layers; a block spans >= max(min_size,
    # ceil(min_share * L)) layers. Thresholds calibrated on post-ReLU block outputs at 16 px.
    "block_penalty": 0.25,
    "block_min_inside": 0.9,
    "block_min_contrast": 0.2,
    "block_min_size": 3,
    "block_min_share": 0.1,
    "block_neighbours": 3,
    "pc1_threshold": 0.5,  # the PC1 view (repsim.pc1_runs)
    "dominant_fraction": 0.01,  # follow-up: top 1% by |PC1 score| at the block's middle layer
    "random_removals": 20,  # ... against this many random removals of the same size
    "control_passes": 2,  # passes of each removal run (block window layers only)
    "edge_layers": 3,  # C4: first and last layers left out of the cross-seed comparison
    "cross_passes": 2,
    "interval_groups": 10,  # batch groups of the delete-a-group jackknife behind every interval
    "level": 0.9,
    "threads": None,
    "device": "cpu",
    "amp": None,  # "bf16": train under bfloat16 autocast on CUDA (ignored on CPU)
}

SMOKE_CONFIG = {
    "digits_test_size": 1000,
    "grids": [
        {"depths": [8, 14], "widths": [1], "seeds": [0], "train_fractions": [1.0]},
        {"depths": [8], "widths": [2], "seeds": [0], "train_fractions": [1.0]},
        {"depths": [14], "widths": [1], "seeds": [1], "train_fractions": [1.0]},
        {"depths": [8], "widths": [1], "seeds": [0], "train_fractions": [0.5]},
    ],
    "epochs": 2,
    "batch_size": 64,
    "cka_batch_size": 50,
    "passes": 2,
    "cross_passes": 1,
    "random_removals": 3,
    "control_passes": 1,
    "n_eval": 100,
    "dominant_fraction": 0.05,
    "layers": "blocks",
    # plumbing only: two epochs fit nothing, so every model counts as fitted and the block
    # thresholds are loose, to run every code path of the claims
    "fit_threshold": 0.0,
    "block_min_inside": 0.3,
    "block_min_contrast": 0.0,
    "block_min_size": 2,
    "edge_layers": 0,
}

#: What ``--dataset cifar10`` changes (before a config file and flags apply): the official
#: recipe (He et al. 2016) -- SGD momentum 0.9, weight decay 1e-4, crop + flip, cosine.
CIFAR10_DEFAULTS = {
    "dataset": "cifar10",
    "image_size": 16,
    "augment": True,
    "cka_batch_size": 256,
    "n_eval": 1000,
    "weight_decay": 1e-4,
    "nesterov": False,
    "lr": 0.1,
    "grids": [{"depths": [20, 56], "widths": [1], "seeds": [0], "train_fractions": [0.0625]}],
    "epochs": 30,
}

TRAIN_KEYS = (
    "dataset", "digits_test_size", "split_seed", "image_size", "epochs", "batch_size", "lr",
    "momentum", "nesterov", "weight_decay", "warmup_fraction", "augment", "crop_padding",
    "min_steps", "amp",
)
ANALYSIS_KEYS = ("n_eval", "cka_batch_size", "passes", "layers", "dominant_fraction", "random_removals",
                 "control_passes", "cross_passes", "interval_groups", "level", "block_penalty",
                 "block_min_inside", "block_min_contrast", "block_min_size", "block_min_share",
                 "block_neighbours")
#: Training settings a sub-grid may override as a recipe check, with each one's id suffix.
RECIPE_KEYS = {"weight_decay": "wd", "min_steps": "st"}
FLAG_KEYS = ("dataset", "epochs", "batch_size", "lr", "image_size", "n_eval", "n_outputs", "passes", "cross_passes",
             "min_steps", "cka_batch_size", "threads", "device", "layers")


def parse_args(argv=None):
    """Command-line flags; every one overrides the config file."""
    p = argparse.ArgumentParser(
        description="Wide/deep ResNet representation study (Nguyen, Raghu & Kornblith 2021).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON file with any keys of DEFAULT_CONFIG")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/wide_deep[_<dataset>])")
    p.add_argument("--smoke", action="store_true", help="tiny models, every stage, seconds")
    p.add_argument("--dataset", choices=["digits", "cifar10"])
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 python batches (with --dataset cifar10)")
    p.add_argument("--train-fraction", type=float, nargs="+", dest="train_fractions",
                   help="training fractions (one grid with --depths/--widths/--seeds)")
    p.add_argument("--depths", type=int, nargs="+")
    p.add_argument("--widths", type=int, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int, choices=[16, 32])
    p.add_argument("--n-eval", type=int)
    p.add_argument("--n-outputs", type=int, help="test images for the output analyses (C5; CIFAR-10: up to 10000)")
    p.add_argument("--from-summary", type=Path, metavar="DIR",
                   help="rewrite DIR/summary.json's statistics and claims and DIR/report.md from DIR/summary.json "
                        "alone (no data, models or training; figures are kept)")
    p.add_argument("--passes", type=int, help="shuffled passes for minibatch CKA (paper: 10)")
    p.add_argument("--cross-passes", type=int, help="shuffled passes for cross-model CKA")
    p.add_argument("--min-steps", type=int, help="reduced-data models train at least this many steps")
    p.add_argument("--cka-batch-size", type=int, help="minibatch CKA batch size (paper: 256)")
    p.add_argument("--layers", choices=["all", "relu", "blocks"], help="which layers the analyses use")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="torch device, e.g. cuda")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return p.parse_args(argv)


def build_config(args) -> dict:
    """Defaults, then the CIFAR-10 defaults (for that dataset), then --smoke, then the
    config file, then explicit flags; checked by :func:`check_config` before returning."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    loaded = {}
    if args.config is not None:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--config {args.config}: cannot read it as JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"--config {args.config} must hold a JSON object; got {type(loaded).__name__}")
        unknown = sorted(set(loaded) - set(DEFAULT_CONFIG) - {"comment"})
        if unknown:
            raise SystemExit(f"unknown config keys {unknown} in {args.config}; expected keys of DEFAULT_CONFIG")
        loaded.pop("comment", None)
    dataset = args.dataset or loaded.get("dataset") or cfg["dataset"]
    if dataset == "cifar10":
        cfg.update(CIFAR10_DEFAULTS)
    if args.smoke:
        cfg.update(copy.deepcopy(SMOKE_CONFIG))
    cfg.update(loaded)
    for key in FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if args.data_dir is not None:
        if cfg["dataset"] != "cifar10":
            raise SystemExit(f"--data-dir is for --dataset cifar10; the dataset is {cfg['dataset']!r} "
                             "(add --dataset cifar10, or drop --data-dir)")
        cfg["data_dir"] = str(args.data_dir)
    if any(v is not None for v in (args.depths, args.widths, args.seeds, args.train_fractions)):
        base = cfg["grids"][0] if cfg["grids"] else {"depths": [20]}
        cfg["grids"] = [{
            "depths": args.depths or base["depths"], "widths": args.widths or [1],
            "seeds": args.seeds or [0], "train_fractions": args.train_fractions or [1.0],
        }]
    if cfg["dataset"] == "cifar10" and cfg["image_size"] is None:
        cfg["image_size"] = 32
    check_config(cfg)
    return cfg


def _int(cfg, key, low, what=""):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise SystemExit(f"{key} must be an integer >= {low}{what}; got {v!r}")


def _number(cfg, key, low, high, what=""):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise SystemExit(f"{key} must be a number in [{low}, {high}]{what}; got {v!r}")


def check_config(cfg) -> None:
    """Refuse a bad setting before anything trains (SystemExit naming the key and value)."""
    if cfg["dataset"] not in ("digits", "cifar10"):
        raise SystemExit(f"dataset must be 'digits' or 'cifar10'; got {cfg['dataset']!r}")
    if cfg["data_dir"] is not None and cfg["dataset"] != "cifar10":
        raise SystemExit(f"data_dir is for dataset 'cifar10'; the dataset is {cfg['dataset']!r}")
    for key, low in (("epochs", 1), ("batch_size", 2), ("digits_test_size", 10), ("min_steps", 0),
                     ("crop_padding", 0), ("passes", 1), ("cross_passes", 1), ("interval_groups", 2),
                     ("random_removals", 0), ("control_passes", 1), ("edge_layers", 0), ("block_min_size", 2),
                     ("block_neighbours", 1), ("split_seed", 0)):
        _int(cfg, key, low)
    _int(cfg, "cka_batch_size", 4, " (the unbiased estimator needs 4 examples per batch)")
    _int(cfg, "n_eval", 8, " (two CKA batches of at least 4 held-out images)")
    if cfg["threads"] is not None:
        _int(cfg, "threads", 1)
    if cfg["n_outputs"] is not None:
        top = cfg["digits_test_size"] if cfg["dataset"] == "digits" else 10000
        _int(cfg, "n_outputs", min(cfg["n_eval"], top), " (the output images include the analysed ones)")
        if cfg["n_outputs"] > top:
            raise SystemExit(f"n_outputs must be at most {top} (the {cfg['dataset']} test images); "
                             f"got {cfg['n_outputs']!r}")
    if not isinstance(cfg["calibrated_on"], list) or not all(isinstance(v, str) for v in cfg["calibrated_on"]):
        raise SystemExit(f"calibrated_on must be a list of model ids; got {cfg['calibrated_on']!r}")
    for key, low, high in (("lr", 1e-12, 100.0), ("momentum", 0.0, 1.0), ("weight_decay", 0.0, 1.0),
                           ("warmup_fraction", 0.0, 1.0), ("fit_threshold", 0.0, 1.0), ("level", 0.5, 0.999),
                           ("block_min_inside", -1.0, 1.0),
                           ("block_min_contrast", -2.0, 2.0), ("block_min_share", 0.0, 1.0),
                           ("pc1_threshold", 0.0, 1.0),
                           ("dominant_fraction", 1e-6, 0.5)):
        _number(cfg, key, low, high)
    _number(cfg, "block_penalty", 1e-6, 2.0, " (in units of 1 - CKA, the same for every number of layers: the "
            "segmentation's per-run cost is linear in the run's size since issue 24; 0.25 by default)")
    if cfg["image_size"] not in (None, 16, 32):
        raise SystemExit(f"image_size must be 16 or 32 (CIFAR-10) or null; got {cfg['image_size']!r}")
    if cfg["layers"] not in ("all", "relu", "blocks"):
        raise SystemExit(f"layers must be 'all', 'relu' or 'blocks'; got {cfg['layers']!r}")
    if cfg["amp"] not in (None, "bf16"):
        raise SystemExit(f"amp must be null or \"bf16\", got {cfg['amp']!r}")
    grids = cfg["grids"]
    if not isinstance(grids, list) or not grids:
        raise SystemExit(f"grids must be a non-empty list of sub-grids; got {grids!r}")
    for i, grid in enumerate(grids):
        if not isinstance(grid, dict) or not grid.get("depths"):
            raise SystemExit(f"grids[{i}] must be an object with a non-empty 'depths' list; got {grid!r}")
        for d in grid["depths"]:
            if isinstance(d, bool) or not isinstance(d, int) or d < 8 or (d - 2) % 6:
                raise SystemExit(f"grids[{i}] depths must be integers 6n+2 >= 8; got {d!r}")
        for key, ok, what in (("widths", lambda w: isinstance(w, int) and not isinstance(w, bool) and w >= 1,
                               "integers >= 1"),
                              ("seeds", lambda s: isinstance(s, int) and not isinstance(s, bool) and s >= 0,
                               "integers >= 0"),
                              ("train_fractions", lambda f: isinstance(f, (int, float)) and not isinstance(f, bool)
                               and math.isfinite(f) and 0 < f <= 1, "numbers in (0, 1]")):
            values = grid.get(key, [1] if key != "seeds" else [0])
            if not isinstance(values, list) or not values or not all(ok(v) for v in values):
                raise SystemExit(f"grids[{i}] {key} must be a non-empty list of {what}; got {values!r}")
        epochs = grid.get("epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise SystemExit(f"grids[{i}] epochs must be an integer >= 1; got {epochs!r}")
        _check_recipe(cfg, grid, i)
        unknown = set(grid) - {"depths", "widths", "seeds", "train_fractions", "epochs", *RECIPE_KEYS}
        if unknown:
            raise SystemExit(f"grids[{i}] has unknown keys {sorted(unknown)}")
    model_specs(cfg)  # refuses one model with two training budgets


def _check_recipe(cfg, grid, i) -> None:
    """A sub-grid's recipe overrides: ``weight_decay`` a number in [0, 1], ``min_steps`` an
    integer >= 1, each different from the config's own value (else it is no check)."""
    if "weight_decay" in grid:
        v = grid["weight_decay"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise SystemExit(f"grids[{i}] weight_decay must be a number in [0.0, 1.0]; got {v!r}")
    if "min_steps" in grid:
        v = grid["min_steps"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SystemExit(f"grids[{i}] min_steps must be an integer >= 1; got {v!r}")
    for key in RECIPE_KEYS:
        if key in grid and grid[key] == cfg[key]:
            raise SystemExit(f"grids[{i}] {key} {grid[key]!r} is the config's own {key}: a recipe check must differ "
                             "from the standard recipe (drop the key, or change it)")


def _token(value) -> str:
    return f"{value:.4g}".replace(".", "p")


def model_id(spec) -> str:
    """``resnet{depth}_w{width}_s{seed}_f{fraction}``, e.g. ``resnet20_w1_s0_f0p25``; a
    recipe check adds its overrides, e.g. ``resnet110_w1_s0_f0p0625_wd0p0002`` or
    ``..._st5000`` (a model without one keeps exactly the id it always had)."""
    out = f"resnet{spec['depth']}_w{spec['width']}_s{spec['seed']}_f{_token(spec['train_fraction'])}"
    recipe = spec.get("recipe") or {}
    return out + "".join(f"_{tag}{_token(recipe[key])}" for key, tag in RECIPE_KEYS.items() if key in recipe)


def is_recipe_check(model) -> bool:
    """Whether a spec or a summary's model entry is a recipe check (not a seed)."""
    return bool(model.get("recipe"))


def standard(models) -> list:
    """The models (specs or summary entries) without recipe checks, in their order: the
    seeds every aggregate, claim and cross-model pair counts."""
    return [m for m in models if not is_recipe_check(m)]


def recipe_text(recipe) -> str:
    """``{"weight_decay": 2e-4}`` -> ``weight decay 0.0002``; ``{"min_steps": 5000}`` ->
    ``at least 5,000 steps``."""
    words = {"weight_decay": lambda v: f"weight decay {v:g}", "min_steps": lambda v: f"at least {v:,} steps"}
    return ", ".join(words[k](recipe[k]) for k in RECIPE_KEYS if k in recipe)


def model_specs(cfg) -> list[dict]:
    """The union of the config's sub-grids, in a stable order (cheapest models first)."""
    seen = {}
    for grid in cfg["grids"]:
        for d in grid["depths"]:
            for w in grid.get("widths", [1]):
                for s in grid.get("seeds", [0]):
                    for f in grid.get("train_fractions", [1.0]):
                        spec = {"depth": int(d), "width": int(w), "seed": int(s), "train_fraction": float(f)}
                        recipe = {k: grid[k] for k in RECIPE_KEYS if k in grid}
                        if recipe:
                            spec["recipe"] = recipe
                        spec["id"] = model_id(spec)
                        if "epochs" in grid:
                            spec["epochs"] = int(grid["epochs"])
                        if spec["id"] in seen and seen[spec["id"]].get("epochs") != spec.get("epochs"):
                            raise SystemExit(f"{spec['id']} is in two sub-grids with different epochs")
                        seen[spec["id"]] = spec
    return sorted(seen.values(), key=lambda s: (s["depth"] * s["width"] ** 2, s["depth"], s["width"],
                                                 -s["train_fraction"], s["seed"], s["id"]))


def train_settings(cfg, spec=None) -> dict:
    """The settings a trained model depends on (stored with its weights); a sub-grid's own
    ``epochs`` replaces the config's for its models, and a recipe check's overrides
    (``weight_decay``, ``min_steps``) the config's for its own."""
    settings = {k: cfg[k] for k in TRAIN_KEYS}
    if spec is not None and "epochs" in spec:
        settings["epochs"] = spec["epochs"]
    if spec is not None and spec.get("recipe"):
        settings.update(spec["recipe"])
    return settings


def analysis_settings(cfg, *specs) -> dict:
    """The settings an extract or cross result of the models ``specs`` depends on (with the
    training settings, and any sub-grid's own epochs and recipe overrides of those models)."""
    settings = {"train": train_settings(cfg), "analysis": {k: cfg[k] for k in ANALYSIS_KEYS}}
    own = {s["id"]: s["epochs"] for s in specs if "epochs" in s}
    if own:
        settings["epochs"] = own
    recipes = {s["id"]: s["recipe"] for s in specs if s.get("recipe")}
    if recipes:
        settings["recipe"] = recipes
    return settings


def deviations(cfg) -> str:
    """The differences from the paper's protocol (He et al. 2016 recipe: SGD momentum 0.9,
    lr 0.1 at batch 128, weight decay 1e-4, crop + flip, no warm-up, ~164 epochs on 32 px
    CIFAR-10; Nguyen et al.: every layer, 10 passes of batch 256), each declared."""
    out = []
    if cfg["dataset"] == "digits":
        out.append("scikit-learn 8x8 digits instead of CIFAR-10 (runs anywhere in minutes)")
    elif cfg["image_size"] != 32:
        out.append(f"{cfg['image_size']} px images (2x2 average pooling) instead of 32 px")
    if cfg["dataset"] == "cifar10" and not cfg["augment"]:
        out.append("no crop + flip augmentation")
    scaled = 0.1 * cfg["batch_size"] / 128
    if abs(cfg["lr"] - scaled) > 1e-12:
        out.append(f"peak lr {cfg['lr']} instead of 0.1" if cfg["batch_size"] == 128 else
                   f"peak lr {cfg['lr']} (linear scaling of 0.1 at batch 128 would give {scaled:g} at batch "
                   f"{cfg['batch_size']})")
    if cfg["weight_decay"] != 1e-4:
        out.append(f"weight decay {cfg['weight_decay']} instead of 1e-4")
    if cfg["nesterov"]:
        out.append("Nesterov momentum")
    if cfg["warmup_fraction"]:
        out.append(f"linear warm-up over {cfg['warmup_fraction']:.0%} of the steps")
    out.append(f"{cfg['epochs']} epochs" + (f" or {cfg['min_steps']} steps, whichever is more (the steps and "
                                            "images of each model are in its row)" if cfg["min_steps"] else ""))
    for grid in cfg["grids"]:
        if "epochs" in grid:
            out.append(f"{grid['epochs']} epochs for depth {'/'.join(map(str, grid['depths']))} on training fraction "
                       f"{'/'.join(f'{f:g}' for f in grid.get('train_fractions', [1.0]))}")
        recipe = {k: grid[k] for k in RECIPE_KEYS if k in grid}
        if recipe:
            out.append(f"recipe check: {recipe_text(recipe)} for depth {'/'.join(map(str, grid['depths']))} width "
                       f"{'/'.join(map(str, grid.get('widths', [1])))} seed {'/'.join(map(str, grid.get('seeds', [0])))}"
                       f" on training fraction {'/'.join(f'{f:g}' for f in grid.get('train_fractions', [1.0]))} "
                       "(compared with its standard twin; not a seed)")
    if cfg["layers"] != "all":
        out.append(f"layers {cfg['layers']!r} instead of every conv/BN/ReLU output")
    if cfg["passes"] != 10:
        out.append(f"{cfg['passes']} CKA passes instead of 10")
    if cfg["amp"]:
        out.append("bf16 autocast training")
    return "; ".join(out)


def outputs_settings(cfg, spec) -> dict:
    """The settings a model's output-analysis predictions depend on."""
    return {"train": train_settings(cfg, spec), "n_outputs": cfg["n_outputs"] or cfg["n_eval"],
            "split_seed": cfg["split_seed"]}
