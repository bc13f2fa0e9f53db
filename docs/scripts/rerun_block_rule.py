"""Re-apply the declared block rule to a study run's stored matrices: which verdicts change?

Run from the repository root on study run folders (a ``--out`` folder of
``examples/wide_deep_study.py``, or a committed ``docs/study/<run>``):

    .venv/bin/python docs/scripts/rerun_block_rule.py docs/study/cifar10_cpu runs/wide_deep

For every model whose layer x layer CKA matrix is stored (``extract/<model>.nc`` of a run's
cache, or the committed ``extracts/<model>.nc``, variable ``cka``) it prints the verdict of the rule of issue 12 (pair-summed segmentation cost, penalty
3 per 54 layers scaled by (L/54)^2, the largest-contrast run of >= min_size layers taken first
and then tested) next to :func:`repsim.find_block` with the run's declared thresholds and the
current defaults for the rest, and whether it changed. Where only ``summary.json`` is
stored, the matrices are missing and no verdict can be recomputed: it says so and lists what
the summary alone decides (the relative size floor on each old block; whether any run of
the old segmentation passed, i.e. whether masking could have hidden a block there).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

import repsim


def old_segment(values, penalty):
    """The issue-12 segmentation: sum over runs of sum over pairs of (1 - S), + penalty per run."""
    n = values.shape[0]
    dis = np.triu(1.0 - np.nan_to_num(values, nan=0.0), 1)
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = dis.cumsum(0).cumsum(1)
    best, start = np.zeros(n + 1), np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(j)
        cost = prefix[j, j] - prefix[i, j] - prefix[j, i] + prefix[i, i]  # as issue 12 (same rounding)
        total = best[i] + cost + penalty
        k = int(np.argmin(total))
        best[j], start[j] = total[k], k
    runs, j = [], n
    while j > 0:
        runs.append((int(start[j]), j - 1))
        j = int(start[j])
    return runs[::-1]


def old_block(values, cfg):
    """``(first, last)`` of the issue-12 rule's block, or None."""
    n = values.shape[0]
    penalty = cfg.get("block_penalty", 3.0) * (n / 54) ** 2
    best, best_c = None, -math.inf
    for f, l in old_segment(values, penalty):
        if l - f + 1 < cfg.get("block_min_size", 3):
            continue
        c = repsim.block_contrast(values, f, l, neighbours=cfg.get("block_neighbours", 3))
        if np.isfinite(c.contrast) and c.contrast > best_c:
            best, best_c, best_inside = (f, l), c.contrast, c.inside
    if best is None or best_inside < cfg.get("block_min_inside", 0.9) or best_c < cfg.get("block_min_contrast", 0.2):
        return None
    return best


def new_block(values, cfg):
    """``(first, last)`` of :func:`repsim.find_block` with the run's thresholds, or None."""
    ds = repsim.find_block(values, min_inside=cfg.get("block_min_inside", 0.9),
                           min_contrast=cfg.get("block_min_contrast", 0.2),
                           min_size=cfg.get("block_min_size", 3), neighbours=cfg.get("block_neighbours", 3))
    return (ds.attrs["block_first_index"], ds.attrs["block_last_index"]) if ds.attrs["has_block"] else None


def _fmt(block):
    return "none" if block is None else f"{block[0]}-{block[1]}"


def rerun(folder: Path) -> list[str]:
    """Report lines for one run folder."""
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    cfg = summary.get("config", {})
    stored = {m["id"]: m for m in summary.get("models", [])}
    extracts = (sorted((folder / "extract").glob("*.nc")) if (folder / "extract").is_dir() else []) or (
        sorted((folder / "extracts").glob("*.nc")) if (folder / "extracts").is_dir() else [])  # committed ones
    lines = [f"## {folder}"]
    if extracts:
        lines.append("| model | L | stored verdict | issue-12 rule | current rule | changed |")
        lines.append("|---|---|---|---|---|---|")
        for path in extracts:
            ds = repsim.load_result(path)  # a DataArray when the file holds the matrix alone
            values = np.asarray((ds["cka"] if "cka" in getattr(ds, "data_vars", ()) else ds).values,
                                dtype=np.float64)
            model = str(ds.attrs.get("model", path.stem))
            m = stored.get(model)
            kept = "—" if m is None else _fmt(None if m.get("block") is None else (m["block"]["first"],
                                                                                   m["block"]["last"]))
            old, new = old_block(values, cfg), new_block(values, cfg)
            lines.append(f"| {model} | {values.shape[0]} | {kept} | {_fmt(old)} | {_fmt(new)} | "
                         f"{'**yes**' if old != new else 'no'} |")
        return lines
    lines.append("No layer x layer matrices stored (no extract/*.nc): verdicts cannot be recomputed.")
    if "block_min_inside" not in cfg:
        lines.append("This run predates the declared block (its summary holds the greedy rule's blocks).")
        return lines
    lines.append("What summary.json alone decides, per model (old verdict; the new rule's size floor "
                 "max(3, ceil(0.1 L)); masking):")
    for m in summary["models"]:
        n = m["n_layers"]
        need = max(cfg.get("block_min_size", 3), math.ceil(0.1 * n - 1e-9))
        b, cand = m.get("block"), m.get("candidate")
        if b is not None:
            text = (f"block {b['first']}-{b['last']} ({b['size']} layers; the floor is {need}: "
                    f"{'kept' if b['size'] >= need else 'REFUSED'} if the new segmentation returns the same run)")
        elif cand is None:
            text = "no block, no run of >= min_size layers"
        elif cand["local_contrast"] < cfg["block_min_contrast"]:
            text = (f"no block; the old segmentation's sharpest run of >= min_size layers, "
                    f"{cand['first']}-{cand['last']}, has local contrast {cand['local_contrast']} < "
                    f"{cfg['block_min_contrast']}: no run passed, so masking hid nothing")
        else:
            text = (f"no block; the sharpest run {cand['first']}-{cand['last']} failed min_inside "
                    f"({cand['inside']}): a passing run of the old segmentation may have been masked")
        lines.append(f"- {m['id']} (L = {n}, fits: {m.get('fits')}): {text}")
    return lines


def main(argv=None) -> int:
    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not folders:
        print(__doc__)
        return 2
    for folder in folders:
        print("\n".join(rerun(folder)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
