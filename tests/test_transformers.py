"""Transformers in the adapter: mask-aware pooling, HF batches and names, word alignment.

Every model and tokenizer is built here from a tiny config or trained in memory on a few
sentences: no download, deterministic.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import repsim
from repsim.adapters.pooling import batch_context, pool

transformers = pytest.importorskip("transformers")  # optional extra repsim-cka[transformers]
tokenizers = pytest.importorskip("tokenizers")

from repsim.adapters.transformers import (  # noqa: E402
    block_layers, hidden_state_layers, standardize_features, word_aligned_batches)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "colourless green ideas sleep furiously",
    "she sells sea shells by the sea shore",
    "how much wood would a woodchuck chuck",
    "the rain in spain stays mainly in the plain",
    "to be or not to be that is the question",
    "all that glitters is not gold",
    "an apple a day keeps the doctor away",
    "the early bird catches the worm",
    "curiosity killed the cat",
    "better late than never",
]


# --------------------------------------------------------------------------- fixtures
def _wordpiece():
    """A WordPiece tokenizer with a fixed vocabulary (trainers order ties by hash, so a
    trained vocabulary could change between processes): words of up to five letters are
    whole tokens, longer ones split into letters."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    words = sorted({w for s in CORPUS for w in s.split() if len(w) <= 5})
    letters = sorted(set("".join(CORPUS).replace(" ", "")) | set(".,;?!"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words + letters + ["##" + c for c in letters]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(vocab))},
                                     unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]")


def _gram(x):
    """The gram the hooks form: of the column-centred features (repsim centres before the
    product, so that a common offset cannot cancel in float32)."""
    xc = x.double() - x.double().mean(dim=0)
    return (xc @ xc.T).to(x.dtype)


def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


@pytest.fixture(scope="module")
def wordpiece():
    return _wordpiece()


@pytest.fixture(scope="module")
def bpe():
    return _bpe()


def _bert(vocab, seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _gpt2(vocab, seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4,
                                  n_positions=64, bos_token_id=None, eos_token_id=None)
    return transformers.GPT2Model(cfg).eval()


@pytest.fixture(scope="module")
def bert(wordpiece):
    return _bert(len(wordpiece))


@pytest.fixture(scope="module")
def gpt2(bpe):
    return _gpt2(len(bpe))


def _sequences(n=8, seed=0, vocab=50, lo=3, hi=11):
    """Token-id lists of varied length (ids >= 4: no special ids)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(4, vocab, (k,), generator=g).tolist() for k in lengths]


def _pad(seqs, side="right", extra=0, pad_id=0):
    """Batch dict padded to max length + extra, position ids following the real tokens."""
    t = max(map(len, seqs)) + extra
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(t - len(s), t)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def _grams(model, batch, layers, pooling, **kw):
    with torch.inference_mode(), repsim.GramHooks(model, layers, pooling=pooling, **kw) as h:
        model(**batch)
        return {k: v.double() for k, v in h.grams.items()}


# --------------------------------------------------------------------------- pooling
POOLED = ["masked_mean", "last_token", "cls", "first_token", "tokens"]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("pooling", POOLED)
def test_padding_length_and_side_do_not_change_the_grams(arch, pooling):
    model = _bert(60) if arch == "bert" else _gpt2(60)
    seqs = _sequences()
    layers = hidden_state_layers(model)
    ref = _grams(model, _pad(seqs), layers, pooling)
    for side, extra in [("right", 5), ("left", 0), ("left", 7)]:
        other = _grams(model, _pad(seqs, side, extra), layers, pooling)
        for name in layers:
            assert other[name].shape == ref[name].shape
            scale = float(ref[name].abs().max())
            assert float((other[name] - ref[name]).abs().max()) <= 1e-5 * scale, (side, name)


def test_none_pooling_flattens_equal_length_examples_whatever_the_padding():
    model = _gpt2(60)
    seqs = _sequences(lo=6, hi=7)  # every example has 6 tokens
    ref = _grams(model, _pad(seqs), "h.*", "none")
    other = _grams(model, _pad(seqs, "left", 4), "h.*", "none")
    for name in ref:
        assert ref[name].shape == (8, 8)
        assert torch.allclose(other[name], ref[name], rtol=1e-5, atol=1e-5)


def test_none_pooling_refuses_examples_of_different_lengths():
    model = _gpt2(60)
    with pytest.raises(ValueError, match=r"pooling='none'.*same number of real tokens.*'h.0'"):
        _grams(model, _pad(_sequences()), "h.0", "none")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_pooling_equals_hand_pooling_of_output_hidden_states(arch):
    model = _bert(60) if arch == "bert" else _gpt2(60)
    batch = _pad(_sequences(), "right", 3)
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    m = batch["attention_mask"].bool()
    idx = torch.arange(len(m))
    hand = {
        "masked_mean": lambda h: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True),
        "last_token": lambda h: h[idx, m.sum(1) - 1],
        "cls": lambda h: h[:, 0],
        "tokens": lambda h: h[m],
    }
    layers = hidden_state_layers(model)
    assert len(layers) == len(hidden)
    for pooling, fn in hand.items():
        grams = _grams(model, batch, layers, pooling)
        for name, h in zip(layers, hidden):
            x = fn(h.double())
            expected = _gram(x)
            assert torch.allclose(grams[name], expected, rtol=1e-5,
                                  atol=1e-5 * float(expected.abs().max())), (pooling, name)


def test_tokens_pooling_has_one_row_per_real_token():
    model = _bert(60)
    batch = _pad(_sequences(), "right", 2)
    grams = _grams(model, batch, "encoder.layer.*", "tokens")
    real = int(batch["attention_mask"].sum())
    assert real < batch["attention_mask"].numel()
    assert all(g.shape == (real, real) for g in grams.values())


@pytest.mark.parametrize("pooling", ["masked_mean", "last_token", "tokens", "none"])
def test_pooling_that_needs_a_mask_refuses_without_one(pooling):
    model = _bert(60)
    ids = _pad(_sequences())["input_ids"]
    with pytest.raises(ValueError, match=rf"pooling='{pooling}' needs the attention mask"):
        with repsim.GramHooks(model, "encoder.layer.0", pooling=pooling):
            model(input_ids=ids)
    with pytest.raises(ValueError, match="needs the attention mask"):  # capture switched off
        _grams(model, _pad(_sequences()), "encoder.layer.0", pooling, mask=None)


def test_explicit_mask_callable_and_batch_entry():
    model = _gpt2(60)
    batch = _pad(_sequences(), "left", 2)
    mask = batch["attention_mask"]
    ref = _grams(model, batch, "h.*", "masked_mean")
    by_callable = _grams(model, batch, "h.*", "masked_mean",
                         mask=lambda args, kwargs: kwargs["attention_mask"])
    # the model attends everywhere; the pooling reads the mask given explicitly, either as
    # a reserved batch entry (removed before the model sees it) or through mask=
    ones = dict(batch, attention_mask=torch.ones_like(mask))
    by_entry = _grams(model, dict(ones, repsim_mask=mask), "h.*", "masked_mean")
    by_hook = _grams(model, ones, "h.*", "masked_mean", mask=lambda args, kwargs: mask)
    with torch.inference_mode():
        h = model(**ones, output_hidden_states=True).hidden_states[1].double()  # h.0
    x = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    for name in ref:
        assert torch.allclose(by_callable[name], ref[name])
        assert torch.allclose(by_entry[name], by_hook[name])
    assert torch.allclose(by_entry["h.0"], _gram(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(by_entry["h.0"], ref["h.0"], rtol=1e-3)


def test_mask_of_wrong_shape_or_values_is_refused():
    x = torch.randn(4, 5, 3)
    with pytest.raises(ValueError, match=r"attention mask must have shape \(n, tokens\) = "
                                         r"\(4, 5\).*layer 'blk'.*got \(4, 6\)"):
        pool(x, "masked_mean", "blk", mask=torch.ones(4, 6))
    with pytest.raises(ValueError, match="must hold 0/1"):
        pool(x, "masked_mean", "blk", mask=torch.full((4, 5), 2))
    empty = torch.ones(4, 5)
    empty[2] = 0
    with pytest.raises(ValueError, match=r"no real token in example\(s\) \[2\]"):
        pool(x, "last_token", "blk", mask=empty)
    with pytest.raises(ValueError, match=r"needs an output of shape \(n, tokens, features\)"):
        pool(torch.randn(4, 3), "masked_mean", "pooler", mask=torch.ones(4, 5))


def test_token_mean_stays_and_warns_on_padded_batches():
    model = _bert(60)
    batch = _pad(_sequences(), "right", 2)
    with pytest.warns(UserWarning, match="averages every position, padding included"):
        grams = _grams(model, batch, "encoder.layer.0", "token_mean")
    with torch.inference_mode():
        h = model(**batch, output_hidden_states=True).hidden_states[1].double().mean(1)
    assert torch.allclose(grams["encoder.layer.0"], _gram(h), rtol=1e-5, atol=1e-6)
    unpadded = _pad(_sequences(lo=5, hi=6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _grams(model, unpadded, "encoder.layer.0", "token_mean")


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=2, max_size=6),
       extra=st.integers(0, 4), left=st.booleans(), seed=st.integers(0, 2**16),
       pooling=st.sampled_from(["masked_mean", "last_token", "cls", "tokens"]))
def test_pool_reads_real_tokens_only(lengths, extra, left, seed, pooling):
    """Garbage at padding positions never reaches the pooled rows (either side, any length)."""
    g = torch.Generator().manual_seed(seed)
    real = [torch.randn(k, 3, generator=g, dtype=torch.float64) * 1e3 + 7 for k in lengths]
    t = max(lengths) + extra
    x = torch.randn(len(lengths), t, 3, generator=g, dtype=torch.float64) * 1e6
    mask = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, r in enumerate(real):
        sl = slice(t - len(r), t) if left else slice(0, len(r))
        x[i, sl] = r
        mask[i, sl] = True
    out = pool(x, pooling, "layer", mask=mask)
    expected = {
        "masked_mean": lambda: torch.stack([r.mean(0) for r in real]),
        "last_token": lambda: torch.stack([r[-1] for r in real]),
        "cls": lambda: torch.stack([r[0] for r in real]),
        "tokens": lambda: torch.cat(real),
    }[pooling]()
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-9)


def test_batch_context_strips_reserved_entries():
    mask = torch.ones(2, 3)
    ctx, stripped = batch_context((), {"input_ids": 1, "repsim_word_ids": mask,
                                       "repsim_cross_tokenizer": True}, "attention_mask")
    assert stripped == {"input_ids": 1}
    assert ctx["word_ids"] is mask and ctx["cross_tokenizer"] and ctx["mask"] is None
    ctx, stripped = batch_context((), {"attention_mask": mask}, "attention_mask")
    assert stripped is None and ctx["mask"] is mask
    with pytest.raises(TypeError, match="attention mask must be a tensor"):
        batch_context((), {"attention_mask": [[1, 1]]}, "attention_mask")


# --------------------------------------------------------------------------- HF conventions
def test_layer_names_for_bert_and_gpt2():
    bert, gpt2 = _bert(60, layers=3), _gpt2(60, layers=3)
    assert block_layers(bert) == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    assert block_layers(bert) == repsim.select_layers(bert, "encoder.layer.*")
    assert hidden_state_layers(bert) == ["embeddings"] + block_layers(bert)
    assert block_layers(gpt2) == ["h.0", "h.1", "h.2"]
    assert hidden_state_layers(gpt2) == ["drop", "h.0", "h.1", "ln_f"]
    torch.manual_seed(0)
    head = transformers.BertForSequenceClassification(bert.config)
    assert hidden_state_layers(head)[:2] == ["bert.embeddings", "bert.encoder.layer.0"]
    with pytest.raises(ValueError, match="found no transformer block list"):
        block_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compare_models_right_matrix_whatever_the_padding(wordpiece):
    """The issue's call: two models, tokenized batches, masked mean, any padding."""
    a, b = _bert(len(wordpiece), seed=0), _bert(len(wordpiece), seed=1)
    sents = CORPUS * 2

    def loader(**kw):
        return [wordpiece(sents[i:i + 8], return_tensors="pt", **kw)
                for i in range(0, len(sents), 8)]

    ref = repsim.compare_models(a, b, loader(padding="longest"), "encoder.layer.*",
                                "encoder.layer.*", pooling="masked_mean", progress=False)
    padded = repsim.compare_models(a, b, loader(padding="max_length", max_length=40),
                                   "encoder.layer.*", "encoder.layer.*",
                                   pooling="masked_mean", progress=False)
    assert ref.shape == (2, 2) and np.isfinite(ref.values).all()
    np.testing.assert_allclose(padded.values, ref.values, atol=1e-5)
    # padding included (the old token_mean) gives another matrix
    with pytest.warns(UserWarning, match="padding included"):
        naive = repsim.compare_models(a, b, loader(padding="max_length", max_length=40),
                                      "encoder.layer.*", "encoder.layer.*",
                                      pooling="token_mean", progress=False)
    assert float(np.abs(naive.values - ref.values).max()) > 0.01


def test_same_tokenizer_tokens_as_examples_match_between_models(wordpiece):
    a, b = _bert(len(wordpiece), seed=0), _bert(len(wordpiece), seed=0)
    batches = [wordpiece(CORPUS[i:i + 6], padding=True, return_tensors="pt")
               for i in range(0, 12, 6)]
    sim = repsim.compare_models(a, b, batches, "encoder.layer.*", "encoder.layer.*",
                                pooling="tokens", progress=False)
    # identical weights, identical token rows: the diagonal is exactly 1
    np.testing.assert_allclose(np.diag(sim.values), 1.0, atol=1e-6)
    assert sim.attrs["n_examples"] == int(sum(b["attention_mask"].sum() for b in batches))


def test_batch_encoding_and_dict_batches_agree(wordpiece, bert):
    enc = wordpiece(CORPUS[:8], padding=True, return_tensors="pt")
    assert not isinstance(enc, dict)  # a BatchEncoding (UserDict)
    s1 = repsim.compare_models(bert, None, [enc], "encoder.layer.*", pooling="last_token",
                               progress=False)
    s2 = repsim.compare_models(bert, None, [dict(enc)], "encoder.layer.*",
                               pooling="last_token", progress=False)
    np.testing.assert_array_equal(s1.values, s2.values)


def test_bfloat16_model_within_tolerance_of_float32(wordpiece):
    """Grams form at float32 from bf16 outputs; CKA of a bf16 model within 0.02 of fp32."""
    model = _bert(len(wordpiece), layers=2)
    batches = [wordpiece(CORPUS[i:i + 6], padding=True, return_tensors="pt")
               for i in range(0, 12, 6)]
    ref = repsim.compare_models(model, None, batches, hidden_state_layers(model),
                                pooling="masked_mean", progress=False)
    half = _bert(len(wordpiece), layers=2).to(torch.bfloat16)
    with repsim.GramHooks(half, "encoder.layer.0", pooling="masked_mean") as hooks, \
            torch.inference_mode():
        half(**batches[0])
        assert hooks.grams["encoder.layer.0"].dtype == torch.float32
    low = repsim.compare_models(half, None, batches, hidden_state_layers(half),
                                pooling="masked_mean", progress=False)
    assert float(np.abs(low.values - ref.values).max()) < 0.02


# --------------------------------------------------------------------------- tokenizers
def test_word_alignment_across_two_tokenizers(wordpiece, bpe):
    sents = [s.replace("fox", "fox.") for s in CORPUS[:8]]  # punctuation splits words too
    batches = word_aligned_batches(wordpiece, bpe, sents, batch_size=4)
    assert len(batches) == 2
    first = next(iter(batches))
    wa, wb = first["a"]["repsim_word_ids"], first["b"]["repsim_word_ids"]
    assert first["a"]["input_ids"].shape != first["b"]["input_ids"].shape  # tokenizers differ
    for i in range(4):
        n_words = len(sents[i].split())
        assert set(wa[i].tolist()) - {-1} == set(range(n_words))
        assert set(wb[i].tolist()) - {-1} == set(range(n_words))
    # special tokens ([CLS], [SEP]) and padding belong to no word
    ids = first["a"]["input_ids"]
    assert (wa[ids == wordpiece.cls_token_id] == -1).all()
    assert (wa[first["a"]["attention_mask"] == 0] == -1).all()

    bert, gpt2 = _bert(len(wordpiece)), _gpt2(len(bpe))
    n_words = sum(len(s.split()) for s in sents)
    for pooling in ("word_mean", "word_first", "word_last"):
        sim = repsim.compare_models(bert, gpt2, batches, "encoder.layer.*", "h.*",
                                    pooling=pooling, progress=False,
                                    capture=repsim.CaptureOptions(
                                        forward=batches.forward(bert, gpt2)))
        assert sim.shape == (2, 2) and np.isfinite(sim.values).all()
        assert sim.attrs["n_examples"] == n_words


def test_word_pooling_by_hand(wordpiece):
    model = _bert(len(wordpiece))
    sents = ["the quick brown fox.", "colourless green ideas sleep furiously"]
    batch = next(iter(word_aligned_batches(wordpiece, None, sents, batch_size=2)))
    word_ids = batch["repsim_word_ids"]
    plain = {k: v for k, v in batch.items() if not k.startswith("repsim_")}
    with torch.inference_mode():
        h = model(**plain, output_hidden_states=True).hidden_states[1].double()
    rows = {"word_mean": [], "word_first": [], "word_last": []}
    for i, s in enumerate(sents):
        for w in range(len(s.split())):
            pos = (word_ids[i] == w).nonzero().flatten()
            rows["word_mean"].append(h[i, pos].mean(0))
            rows["word_first"].append(h[i, pos[0]])
            rows["word_last"].append(h[i, pos[-1]])
    assert any(len((word_ids[i] == w).nonzero()) > 1 for i in range(2) for w in range(4))
    for pooling, r in rows.items():
        x = torch.stack(r)
        g = _grams(model, batch, "encoder.layer.0", pooling)["encoder.layer.0"]
        assert torch.allclose(g, _gram(x), rtol=1e-5, atol=1e-5 * float((_gram(x)).abs().max()))


@pytest.mark.parametrize("pooling", ["tokens", "none"])
def test_token_level_comparison_across_tokenizers_is_refused(wordpiece, bpe, pooling):
    batches = word_aligned_batches(wordpiece, bpe, CORPUS[:8], batch_size=8)
    bert, gpt2 = _bert(len(wordpiece)), _gpt2(len(bpe))
    with pytest.raises(ValueError, match="tokenize the text differently, so token i of one "
                                         "model is not token i of the other"):
        repsim.compare_models(bert, gpt2, batches, "encoder.layer.*", "h.*",
                              pooling=pooling, progress=False,
                              capture=repsim.CaptureOptions(forward=batches.forward(bert, gpt2)))


def test_word_aligned_batches_bad_input(wordpiece, bpe):
    batches = word_aligned_batches(wordpiece, bpe, CORPUS[:8], batch_size=8)
    bert, gpt2 = _bert(len(wordpiece)), _gpt2(len(bpe))
    with pytest.raises(ValueError, match=r"pass forward=batches.forward\(model_a, model_b\)"):
        repsim.compare_models(bert, gpt2, batches, "encoder.layer.*", "h.*",
                              pooling="word_mean", progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        word_aligned_batches(wordpiece, bpe, CORPUS, batch_size=0)
    with pytest.raises(ValueError, match="sentences must be a non-empty sequence"):
        word_aligned_batches(wordpiece, bpe, "one sentence")
    with pytest.raises(ValueError, match=r"sentences\[1\] has no words"):
        word_aligned_batches(wordpiece, bpe, ["a b", "   "])
    long = [" ".join(["curiosity"] * 30)]
    with pytest.raises(ValueError, match=r"sentence 0 keeps \d+ of its 30 words under "
                                         r"tokenizer_a but \d+ under tokenizer_b"):
        list(word_aligned_batches(wordpiece, bpe, long, max_length=20))
    nopad = _bpe()
    nopad.pad_token = None
    with pytest.raises(ValueError, match="tokenizer_b has no padding token"):
        list(word_aligned_batches(wordpiece, nopad, CORPUS[:2]))


# --------------------------------------------------------------------------- rogue dimensions
def test_standardize_features_values_and_rogue_dimension():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 20, generator=g, dtype=torch.float64)
    z = standardize_features(x * 1e4 + 3e6)  # hostile offset and scale
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1, rtol=1e-9)
    np.testing.assert_allclose(z.numpy(), standardize_features(x).numpy(), atol=1e-6)
    const = torch.cat([x, torch.full((200, 1), 5.0, dtype=torch.float64)], 1)
    assert (standardize_features(const)[:, -1] == 0).all()
    # one rogue dimension with 1000x the spread dominates linear CKA; standardised, it doesn't
    y = x + 0.5 * torch.randn(200, 20, generator=g, dtype=torch.float64)
    rogue = y.clone()
    rogue[:, 0] *= 1000
    plain = repsim.cka(x.numpy(), rogue.numpy())
    fixed = repsim.cka(standardize_features(x).numpy(), standardize_features(rogue).numpy())
    target = repsim.cka(standardize_features(x).numpy(), standardize_features(y).numpy())
    assert abs(fixed - target) < 1e-9
    assert abs(plain - target) > 0.3
    with pytest.raises(ValueError, match=r"needs a \(n >= 2, features\) tensor; got \(1, 3\)"):
        standardize_features(torch.ones(1, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        standardize_features(torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))


def test_standardize_as_transform_in_compare_models(wordpiece, bert):
    batches = [wordpiece(CORPUS[i:i + 6], padding=True, return_tensors="pt")
               for i in range(0, 12, 6)]
    sim = repsim.compare_models(bert, None, batches, "encoder.layer.*", progress=False,
                                capture=repsim.CaptureOptions(pooling="masked_mean",
                                                              transform=standardize_features))
    np.testing.assert_allclose(np.diag(sim.values), 1.0, atol=1e-9)


def test_import_repsim_does_not_import_transformers():
    code = ("import sys, repsim; repsim.GramHooks; "
            "print('transformers' in sys.modules, 'tokenizers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]


class _TupleLinear(torch.nn.Linear):
    """Returns ``(output, None)``, as BertLayer and GPT2Block did in transformers 4.x."""

    def forward(self, x):
        return (super().forward(x), None)


class _Blocks(torch.nn.Module):
    def __init__(self, block_type):
        super().__init__()
        torch.manual_seed(0)
        self.h = torch.nn.ModuleList(block_type(8, 8) for _ in range(2))

    def forward(self, inputs_embeds, attention_mask=None):
        x = inputs_embeds
        for block in self.h:
            out = block(x)
            x = out[0] if isinstance(out, tuple) else out
        return x


def test_tuple_and_model_output_outputs(wordpiece):
    tensors, tuples = _Blocks(torch.nn.Linear), _Blocks(_TupleLinear)  # same weights
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(5) < torch.tensor([[2], [5], [3], [4], [5], [1]])).long()
    batch = {"inputs_embeds": x, "attention_mask": mask}
    ref = _grams(tensors, batch, "h.*", "masked_mean")
    tup = _grams(tuples, batch, "h.*", "masked_mean")
    with torch.inference_mode():
        h0 = tensors.h[0](x).double()
    m0 = (h0 * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(ref["h.0"], _gram(m0), rtol=1e-5, atol=1e-6)
    for name in ref:
        assert torch.allclose(tup[name], ref[name])
    model = _bert(len(wordpiece))
    batch = wordpiece(CORPUS[:6], padding=True, return_tensors="pt")
    # a submodule that returns a ModelOutput (the base model inside a task model)
    torch.manual_seed(0)
    head = transformers.BertForSequenceClassification(model.config).eval()
    head.bert.load_state_dict(model.state_dict())
    out = _grams(head, batch, "bert", "masked_mean",
                 select=lambda o: o.last_hidden_state)
    last = _grams(model, batch, "encoder.layer.1", "masked_mean")["encoder.layer.1"]
    assert torch.allclose(out["bert"], last, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match=r"layer 'bert' returned .*pass select="):
        _grams(head, batch, "bert", "masked_mean")


def test_vision_transformer_cls_and_patch_mean():
    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32)).eval()
    pixels = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    layers = hidden_state_layers(vit)
    with torch.inference_mode():
        hidden = vit(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(layers) == len(hidden) == 3
    cls = _grams(vit, {"pixel_values": pixels}, layers, "cls")  # no mask: position 0
    patch = _grams(vit, {"pixel_values": pixels}, layers, lambda x: x[:, 1:].mean(dim=1))
    for name, h in zip(layers, hidden):
        c, p = h[:, 0].double(), h[:, 1:].double().mean(1)
        assert torch.allclose(cls[name], _gram(c), rtol=1e-5, atol=1e-6)
        assert torch.allclose(patch[name], _gram(p), rtol=1e-5, atol=1e-6)
