"""Hugging Face conventions for the PyTorch adapter: layer names, word alignment, rogue dimensions.

:func:`repsim.compare_models` already takes dict and ``BatchEncoding`` batches as keyword
arguments and captures their ``attention_mask`` for the mask-aware poolings
(:mod:`repsim.adapters.pooling`). Its default pooling, ``flatten``, refuses a padded
``(n, tokens, d)`` output (it would read padding as features): pass
``pooling="masked_mean"`` (or ``"cls"``, ``"last_token"``, ``"tokens"``, a word pooling)
for text. This module adds what is specific to transformer models:

- :func:`block_layers` and :func:`hidden_state_layers`: the module names of the blocks
  (``encoder.layer.*``, ``h.*``, ``model.layers.*``, ...), and the modules whose outputs
  are the ``output_hidden_states`` of the model (embeddings + every block, the final norm
  where the model applies it to the last hidden state);
- :func:`word_aligned_batches`: batches that carry each token's word index, so that two
  models with different tokenizers can be compared word by word;
- :func:`standardize_features`: per-layer standardisation of features before the gram,
  against the rogue dimensions of language models.

Nothing here imports the ``transformers`` package: it works on any tokenizer with the
``PreTrainedTokenizerFast`` call convention (``word_ids``) and any ``nn.Module``.

References
----------
Timkey & van Schijndel (2021), "All bark and no bite: rogue dimensions in transformer
language models obscure representational quality", EMNLP.
"""

from __future__ import annotations

import torch
from torch import nn

from ._selection import select_layers, unwrap_model

__all__ = ["block_layers", "hidden_state_layers", "standardize_features",
           "word_aligned_batches"]

# names of the block list in the usual architectures (BERT/ViT, GPT-2, Llama/Mistral/...,
# timm-style ViTs); matched as the last components of a ModuleList's name
BLOCK_LISTS = ("encoder.layer", "h", "layers", "blocks")
# module whose output is hidden_states[0], relative to the block list's parent or the root
EMBEDDINGS = ("embeddings", "drop", "embed_tokens")
# final norms that transformers applies to the last entry of hidden_states
FINAL_NORMS = {"h": "ln_f", "layers": "norm"}


def _block_list(model):
    model = unwrap_model(model)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        for suffix in BLOCK_LISTS:
            if name == suffix or name.endswith("." + suffix):
                found.append((name, suffix))
                break
    if not found:
        raise ValueError(
            f"found no transformer block list in {type(model).__name__} (a ModuleList named "
            f"{' / '.join(BLOCK_LISTS)}); select the layers by name or glob instead, e.g. "
            "layers='encoder.layer.*'"
        )
    if len(found) > 1:
        raise ValueError(
            f"{type(model).__name__} has several block lists {[f for f, _ in found]} (an "
            "encoder-decoder?); select the layers by name or glob, e.g. 'encoder.block.*'"
        )
    return found[0]


def block_layers(model):
    """Module names of a transformer's blocks, in order.

    Parameters
    ----------
    model : torch.nn.Module
        A transformer whose blocks sit in one ``nn.ModuleList`` named ``encoder.layer``
        (BERT, RoBERTa, ViT), ``h`` (GPT-2), ``layers`` (Llama, Mistral, Qwen) or
        ``blocks``, possibly under a prefix (``bert.``, ``transformer.``, ``model.``).

    Returns
    -------
    list of str
        E.g. ``["encoder.layer.0", ..., "encoder.layer.11"]`` for ``BertModel``; the same
        list as ``select_layers(model, "encoder.layer.*")``.

    Raises
    ------
    ValueError
        If no block list, or more than one, is found.
    """
    name, _ = _block_list(model)
    return select_layers(model, f"{name}.*")


def hidden_state_layers(model):
    """The modules whose outputs are the model's ``output_hidden_states``, in order.

    ``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of
    block ``i - 1``, except that models with a final norm inside the base model (GPT-2's
    ``ln_f``, Llama's ``norm``) put the *normed* last block there. Hooking these modules
    gives the same tensors as ``output_hidden_states=True`` without keeping them all.

    Parameters
    ----------
    model : torch.nn.Module
        A transformer as for :func:`block_layers`.

    Returns
    -------
    list of str
        ``L + 1`` module names for ``L`` blocks: e.g. ``["embeddings", "encoder.layer.0",
        ..., "encoder.layer.11"]`` for ``BertModel``, ``["drop", "h.0", ..., "h.10",
        "ln_f"]`` for ``GPT2Model``.

    Raises
    ------
    ValueError
        If the block list or the embedding module is not found.
    """
    inner = unwrap_model(model)
    modules = dict(inner.named_modules())
    name, suffix = _block_list(inner)
    blocks = select_layers(inner, f"{name}.*")
    parent = name[: -len(suffix)]  # "" or "bert." / "transformer." / "model."
    embed = next((parent + e for e in EMBEDDINGS if parent + e in modules), None)
    if embed is None:
        raise ValueError(
            f"found the blocks {name}.* of {type(inner).__name__} but no embedding module "
            f"({' / '.join(parent + e for e in EMBEDDINGS)}); list the layers explicitly"
        )
    final = FINAL_NORMS.get(suffix)
    if final is not None and parent + final in modules:
        blocks = blocks[:-1] + [parent + final]
    return [embed] + blocks


def standardize_features(x):
    """Standardise every feature to zero mean and unit variance over the examples.

    Pass it as ``transform=`` to :class:`repsim.CaptureOptions` (for
    :func:`repsim.compare_models`) or :class:`repsim.GramHooks`: each layer's
    ``(n, features)`` matrix is standardised per batch before its gram, so a few
    dimensions with huge variance (the rogue dimensions of transformer language models,
    Timkey & van Schijndel 2021) no longer dominate linear CKA. Linear CKA on standardised
    features is the CKA of the feature correlation structure rather than the covariance.

    Parameters
    ----------
    x : torch.Tensor, shape (n, p)
        Floating point, ``n >= 2``.

    Returns
    -------
    torch.Tensor, shape (n, p), dtype of ``x``
        ``(x - mean) / std`` per column, with the statistics in float64. A constant
        column (zero variance) becomes zero: it contributes nothing to a centred gram
        either way.

    Raises
    ------
    ValueError
        If ``x`` is not 2-D with at least 2 rows, or holds NaN or Inf.

    References
    ----------
    Timkey & van Schijndel (2021), EMNLP, section 5 (standardisation as a fix).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            "standardize_features is a transform of the torch adapter and needs a torch "
            f"tensor (n >= 2, features); got {type(x).__module__}.{type(x).__name__} -- "
            "for other arrays use torch.as_tensor(numpy.asarray(x))")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"standardize_features needs a (n >= 2, features) tensor; got {tuple(x.shape)}")
    x64 = x.to(torch.float64)
    if not torch.isfinite(x64).all():
        raise ValueError("standardize_features got NaN or Inf values")
    centred = x64 - x64.mean(dim=0, keepdim=True)
    std = centred.pow(2).mean(dim=0, keepdim=True).sqrt()
    scale = torch.where(std > 0, 1.0 / torch.where(std > 0, std, 1.0), 0.0)
    return (centred * scale).to(x.dtype if x.dtype.is_floating_point else torch.float64)


# --------------------------------------------------------------------------- word alignment
def _words(sentence, index):
    if isinstance(sentence, str):
        words = sentence.split()
    elif isinstance(sentence, (list, tuple)) and all(isinstance(w, str) for w in sentence):
        words = list(sentence)
    else:
        raise TypeError(
            f"sentences[{index}] must be a string or a list of words; got {sentence!r:.60}"
        )
    if not words:
        raise ValueError(f"sentences[{index}] has no words")
    return words


def _encode(tokenizer, words, max_length, which):
    if getattr(tokenizer, "pad_token", None) is None:
        raise ValueError(
            f"{which} has no padding token; set one first (e.g. tokenizer.pad_token = "
            "tokenizer.eos_token for GPT-2-style tokenizers)"
        )
    enc = tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt",
                    truncation=max_length is not None, max_length=max_length)
    try:
        ids = [enc.word_ids(i) for i in range(len(words))]
    except (ValueError, AttributeError) as err:
        raise TypeError(
            f"{which} must be a fast tokenizer (PreTrainedTokenizerFast) that reports word "
            f"ids; got {type(tokenizer).__name__}"
        ) from err
    word_ids = torch.tensor([[-1 if w is None else w for w in row] for row in ids])
    kwargs = dict(enc)
    kwargs["repsim_word_ids"] = word_ids
    return kwargs


class WordAlignedBatches:
    """Batches of the same sentences for one or two tokenizers, with each token's word.

    Made by :func:`word_aligned_batches`; iterable any number of times (for ``epochs``).
    """

    def __init__(self, tokenizer_a, tokenizer_b, sentences, batch_size, max_length):
        self.tokenizer_a, self.tokenizer_b = tokenizer_a, tokenizer_b
        self.words = [_words(s, i) for i, s in enumerate(sentences)]
        self.batch_size = batch_size
        self.max_length = max_length
        self.cross_tokenizer = tokenizer_b is not None and tokenizer_b is not tokenizer_a

    def __len__(self):
        return -(-len(self.words) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.words), self.batch_size):
            words = self.words[start : start + self.batch_size]
            a = _encode(self.tokenizer_a, words, self.max_length, "tokenizer_a")
            if not self.cross_tokenizer:
                yield a
                continue
            b = _encode(self.tokenizer_b, words, self.max_length, "tokenizer_b")
            for i in range(len(words)):
                wa = set(a["repsim_word_ids"][i].tolist()) - {-1}
                wb = set(b["repsim_word_ids"][i].tolist()) - {-1}
                if wa != wb:
                    raise ValueError(
                        f"sentence {start + i} keeps {len(wa)} of its {len(words[i])} words "
                        f"under tokenizer_a but {len(wb)} under tokenizer_b (truncation at "
                        f"max_length={self.max_length}); raise max_length or shorten it"
                    )
            a["repsim_cross_tokenizer"] = b["repsim_cross_tokenizer"] = True
            yield {"a": a, "b": b}

    def forward(self, model_a, model_b):
        """A ``CaptureOptions(forward=...)`` for :func:`repsim.compare_models`: each model
        gets its own encoding.

        Parameters
        ----------
        model_a, model_b : torch.nn.Module
            The models in the order given to ``compare_models``.

        Returns
        -------
        callable
            ``forward(model, batch)`` calling ``model(**batch["a"])`` for ``model_a`` and
            ``model(**batch["b"])`` for ``model_b``.
        """
        inner_a, inner_b = unwrap_model(model_a), unwrap_model(model_b)
        if inner_a is inner_b:
            raise ValueError("model_a and model_b are the same model; with one tokenizer "
                             "the batches need no forward=")

        def forward(model, batch):
            if not isinstance(batch, dict) or set(batch) != {"a", "b"}:
                return model(**batch)
            part = "a" if unwrap_model(model) is inner_a else "b"
            if part == "b" and unwrap_model(model) is not inner_b:
                raise ValueError("forward got a model that is neither model_a nor model_b")
            return model(**batch[part])

        return forward


def word_aligned_batches(tokenizer_a, tokenizer_b, sentences, *, batch_size=32,
                         max_length=None):
    """Tokenize the same words for two models, recording which word each token belongs to.

    Every sentence is split into words (on whitespace, or given as a list of words) and
    passed to each tokenizer with ``is_split_into_words=True``, so both tokenizers see the
    same words and their word ids refer to the same words. With
    ``pooling="word_mean"``, ``"word_first"`` or ``"word_last"`` every word becomes an
    example: its sub-word tokens are averaged, or its first or last one is kept. Special
    tokens (``[CLS]``, ``[SEP]``, ``<s>``) and padding belong to no word and are left out.

    Parameters
    ----------
    tokenizer_a : PreTrainedTokenizerFast
        Tokenizer of ``model_a`` (a fast tokenizer: it must report word ids).
    tokenizer_b : PreTrainedTokenizerFast or None
        Tokenizer of ``model_b``; None (or ``tokenizer_a``) for one tokenizer, when the
        batches are plain keyword-argument dicts and need no ``forward=``.
    sentences : sequence of str or of lists of str
        The text; a string is split on whitespace.
    batch_size : int, default 32
        Sentences per batch.
    max_length : int, optional
        Truncate to this many tokens; a sentence that loses different words under the two
        tokenizers raises ValueError when its batch is made.

    Returns
    -------
    WordAlignedBatches
        An iterable of batches (re-iterable, ``len()`` is the number of batches). With two
        tokenizers each batch is ``{"a": kwargs_a, "b": kwargs_b}``; pass
        ``capture=CaptureOptions(forward=batches.forward(model_a, model_b))`` to
        :func:`repsim.compare_models`.
        The entries ``repsim_word_ids`` (and ``repsim_cross_tokenizer``) are read and
        removed by the adapter's hooks; the models never see them.

    Notes
    -----
    Token-level poolings (``"tokens"``, ``"none"``) refuse batches from two tokenizers:
    token ``i`` of one tokenization is not token ``i`` of the other, so rows would pair
    unrelated pieces of text. Sentence-level poolings (``"masked_mean"``,
    ``"last_token"``, ``"cls"``) and the word poolings are well defined across tokenizers.

    Examples
    --------
    >>> batches = word_aligned_batches(tok_bert, tok_gpt2, sentences, batch_size=16)
    ... # doctest: +SKIP
    >>> sim = repsim.compare_models(bert, gpt2, batches, "encoder.layer.*", "h.*",
    ...     pooling="word_mean",
    ...     capture=repsim.CaptureOptions(forward=batches.forward(bert, gpt2)))  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    if max_length is not None and (isinstance(max_length, bool)
                                   or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be None or an integer >= 1; got {max_length!r}")
    if isinstance(sentences, str) or not len(sentences):
        raise ValueError("sentences must be a non-empty sequence of sentences; got "
                         f"{sentences!r:.60}")
    return WordAlignedBatches(tokenizer_a, tokenizer_b, sentences, batch_size, max_length)
