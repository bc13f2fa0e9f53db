"""Pooling policies: a layer's output ``(n, ...)`` -> the ``(rows, features)`` of its gram.

Sequence outputs ``(n, tokens, d)`` of padded batches need the attention mask: padding
positions carry hidden states of the same norm as real tokens, so any pooling that reads
them measures padding. The mask-aware policies here take the mask (``(n, tokens)``, 1 or
True for a real token) that :class:`repsim.GramHooks` captures from the model's keyword
arguments, and refuse to run without one.

=================  =====================================================================
policy             rows and features
=================  =====================================================================
``flatten``        ``(n, prod(rest))``: every unit (the default; positions included;
                   refused on a padded ``(n, tokens, d)`` batch, see below)
``spatial_mean``   ``(n, c)``: conv maps averaged over space
``token_mean``     ``(n, d)``: mean over *every* position, padding included
``masked_mean``    ``(n, d)``: mean over the real tokens (mask required)
``first_token``    ``(n, d)``: the first real token (``[CLS]``); position 0 without a mask
``cls``            same as ``first_token``
``last_token``     ``(n, d)``: the last real token, for either padding side (mask required)
``tokens``         ``(sum(mask), d)``: every real token as an example (mask required)
``none``           ``(n, length * d)``: real tokens flattened; every example must have the
                   same number of real tokens (mask required)
``word_mean``      ``(words, d)``: every word as an example, the mean of its sub-words
``word_first``     ``(words, d)``: the first sub-word of each word
``word_last``      ``(words, d)``: the last sub-word of each word
=================  =====================================================================

The word policies need each token's word index (``-1`` for special and padding tokens),
which :func:`repsim.word_aligned_batches` puts in its batches.

Padded text and the default. ``flatten`` (the default of :class:`repsim.GramHooks` and
:func:`repsim.compare_models`, the paper's protocol for conv nets) would turn every token
position of a ``(n, tokens, d)`` output into features, padding included (reading padding
turns a MiniLM CKA of 0.485 into 0.654, see the transformers guide). So when the
captured mask shows padding (a 0 anywhere in a mask of shape ``(n, tokens)`` matching
the output), ``flatten`` refuses with a message naming the layer and the mask-aware
policies to use instead, rather than return a number that measures padding. A mask without padding (equal-length sequences) or no mask at all
leaves ``flatten`` as it is; the result's ``pooling`` attribute records the policy used.

Only real tokens are read. The mask-aware policies select the real tokens before any
arithmetic, so NaN or Inf at padding positions (some models leave them there) do not
reach the gram; non-finite values at real tokens are refused downstream, naming the layer.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["POOLINGS", "batch_context", "pool"]

POOLINGS = ("flatten", "spatial_mean", "token_mean", "masked_mean", "first_token", "cls",
            "last_token", "tokens", "none", "word_mean", "word_first", "word_last")
MASKED = ("masked_mean", "last_token", "tokens", "none")
WORDS = ("word_mean", "word_first", "word_last")
SEQUENCE = ("token_mean", "first_token", "cls") + MASKED + WORDS
# token-level policies: a row (or feature) is one token position of one tokenizer
TOKEN_LEVEL = ("tokens", "none")


def _check_sequence(x, pooling, name):
    if x.ndim != 3:
        raise ValueError(
            f"pooling={pooling!r} needs an output of shape (n, tokens, features); "
            f"layer {name!r} gave shape {tuple(x.shape)}"
        )


def _check_aligned(x, extra, what, pooling, name):
    if extra.ndim != 2 or tuple(extra.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{what} must have shape (n, tokens) = {tuple(x.shape[:2])} to match layer "
            f"{name!r} (output shape {tuple(x.shape)}) for pooling={pooling!r}; got "
            f"{tuple(extra.shape)}"
        )


def _as_mask(mask, x, pooling, name):
    if mask is None:
        raise ValueError(
            f"pooling={pooling!r} needs the attention mask to tell real tokens from padding, "
            f"and none was found for layer {name!r}: pass batches as dicts (or BatchEncoding) "
            "with an 'attention_mask' entry, call the model with attention_mask=..., or give "
            "the mask explicitly (GramHooks(mask=...) or a 'repsim_mask' entry in the batch)"
        )
    _check_aligned(x, mask, "the attention mask", pooling, name)
    mask = mask.to(x.device)
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError(
                f"the attention mask for layer {name!r} must hold 0/1 (or booleans); got "
                f"values {sorted(set(mask.unique().tolist()))[:6]}"
            )
        mask = mask != 0
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"the attention mask has no real token in example(s) {empty.tolist()[:10]} of "
            f"this batch (layer {name!r}); every example needs at least one"
        )
    return mask


def _refuse_padded_flatten(x, mask, name):
    """``flatten`` on a padded ``(n, tokens, d)`` batch reads padding as features: refuse."""
    if x.ndim != 3 or mask.ndim != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
        return
    padded = bool((mask == 0).any()) if mask.dtype != torch.bool else bool((~mask).any())
    if padded:
        raise ValueError(
            f"pooling='flatten' (the default) would read the padding positions of layer "
            f"{name!r} (output shape {tuple(x.shape)}, and the attention mask shows padding) "
            "as features, so the similarity would measure padding; choose a pooling that "
            "reads the real tokens only: pooling='masked_mean' (a sentence embedding), "
            "'cls', 'last_token', 'tokens' or a word pooling (see repsim.adapters.pooling)"
        )


def _word_rows(x, word_ids, pooling, name):
    """Rows = the words of every example, in example order then word order."""
    if word_ids is None:
        raise ValueError(
            f"pooling={pooling!r} needs each token's word index, and none was found for "
            f"layer {name!r}; build the batches with repsim.word_aligned_batches"
        )
    _check_aligned(x, word_ids, "the word ids", pooling, name)
    word_ids = word_ids.to(x.device, torch.long)
    keep = word_ids >= 0
    if not keep.any(dim=1).all():
        bad = (~keep.any(dim=1)).nonzero().flatten().tolist()[:10]
        raise ValueError(f"example(s) {bad} of this batch have no word (layer {name!r})")
    n, t = word_ids.shape
    example = torch.arange(n, device=x.device).unsqueeze(1).expand(n, t)
    width = int(word_ids.max()) + 1
    keys = (example * width + word_ids)[keep]
    tokens = x[keep]                                # (real tokens, d), row-major order
    words, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    if pooling == "word_mean":
        sums = torch.zeros(len(words), x.shape[2], dtype=x.dtype, device=x.device)
        sums.index_add_(0, inverse, tokens)
        counts = torch.bincount(inverse, minlength=len(words)).to(x.dtype)
        return sums / counts.unsqueeze(1)
    position = torch.arange(len(keys), device=x.device)
    reduce = "amin" if pooling == "word_first" else "amax"
    init = len(keys) if reduce == "amin" else -1
    pick = torch.full((len(words),), init, dtype=torch.long, device=x.device)
    pick = pick.scatter_reduce(0, inverse, position, reduce=reduce)
    return tokens[pick]


def pool(x, pooling, name, *, mask=None, word_ids=None, cross_tokenizer=False):
    """Reduce a layer's output to the ``(rows, features)`` matrix of its gram.

    Parameters
    ----------
    x : torch.Tensor, shape (n, ...)
        The layer's output; ``(n, tokens, d)`` for the sequence policies.
    pooling : str or callable
        One of :data:`POOLINGS` (see the module docstring) or a callable that takes ``x``
        and returns a tensor of shape ``(n, ...)``.
    name : str
        The layer's name, for error messages.
    mask : torch.Tensor, shape (n, tokens), optional
        1 (True) for real tokens, 0 (False) for padding. Required by ``masked_mean``,
        ``last_token``, ``tokens`` and ``none``; ``first_token``/``cls`` use it to find the
        first real token under left padding.
    word_ids : torch.Tensor, shape (n, tokens), optional
        Each token's word index within its example, ``-1`` for special and padding tokens.
        Required by the word policies.
    cross_tokenizer : bool, default False
        True when the two compared models tokenized the text differently; the token-level
        policies (``tokens``, ``none``) then refuse, since token ``i`` of one model is not
        token ``i`` of the other.

    Returns
    -------
    torch.Tensor, shape (rows, features)
        ``rows`` is ``n`` except for ``tokens`` (the number of real tokens) and the word
        policies (the number of words).

    Raises
    ------
    ValueError
        For a wrong output rank, a missing or misshapen mask or word ids, an example
        without real tokens, ``none`` on examples of different lengths, or a token-level
        policy across tokenizers.
    """
    if pooling == "flatten" and mask is not None:
        _refuse_padded_flatten(x, mask, name)
    if callable(pooling):
        out = pooling(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"pooling returned {type(out).__name__} for layer {name!r}; expected a tensor"
            )
        x = out
    elif pooling == "spatial_mean":
        if x.ndim < 3:
            raise ValueError(
                f"pooling='spatial_mean' needs an output of shape (n, channels, *spatial); "
                f"layer {name!r} gave shape {tuple(x.shape)}"
            )
        x = x.mean(dim=tuple(range(2, x.ndim)))
    elif pooling in SEQUENCE:
        _check_sequence(x, pooling, name)
        if cross_tokenizer and pooling in TOKEN_LEVEL:
            raise ValueError(
                f"pooling={pooling!r} compares token positions, but the two models tokenize "
                "the text differently, so token i of one model is not token i of the other "
                f"(layer {name!r}); compare words (pooling='word_mean', 'word_first' or "
                "'word_last') or whole sequences ('masked_mean', 'last_token', 'cls')"
            )
        if pooling == "token_mean":
            if mask is not None and not bool((mask != 0).all()):
                warnings.warn(
                    f"pooling='token_mean' averages every position, padding included, and "
                    f"this batch is padded (layer {name!r}); use pooling='masked_mean' to "
                    "average the real tokens only", stacklevel=2)
            x = x.mean(dim=1)
        elif pooling in ("first_token", "cls"):
            if mask is None:
                x = x[:, 0]
            else:
                m = _as_mask(mask, x, pooling, name)
                x = x[torch.arange(x.shape[0], device=x.device), m.int().argmax(dim=1)]
        elif pooling in WORDS:
            return _word_rows(x, word_ids, pooling, name)
        else:
            m = _as_mask(mask, x, pooling, name)
            if pooling == "masked_mean":
                # select, don't multiply: NaN/Inf at padding times 0 is NaN
                real = m.unsqueeze(2)
                x = torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))
                x = x.sum(dim=1) / real.sum(dim=1).to(x.dtype)
            elif pooling == "last_token":
                t = x.shape[1]
                last = t - 1 - m.flip(1).int().argmax(dim=1)
                x = x[torch.arange(x.shape[0], device=x.device), last]
            elif pooling == "tokens":
                return x[m]
            else:  # "none"
                lengths = m.sum(dim=1)
                lo, hi = int(lengths.min()), int(lengths.max())
                if lo != hi:
                    raise ValueError(
                        f"pooling='none' flattens the real tokens into features, which needs "
                        f"the same number of real tokens in every example; layer {name!r} got "
                        f"lengths from {lo} to {hi} in this batch (use 'masked_mean', "
                        "'tokens' or batches of equal-length sequences)"
                    )
                x = x[m].reshape(x.shape[0], -1)
    if x.ndim < 2:
        raise ValueError(
            f"layer {name!r} gave shape {tuple(x.shape)}; expected (n, ...) with at least 2 "
            "dimensions (a per-example output)"
        )
    return x.reshape(x.shape[0], -1)


# reserved keyword arguments: read (and removed) by the root pre-hook, never seen by a model
RESERVED = ("repsim_mask", "repsim_word_ids", "repsim_cross_tokenizer")


def batch_context(args, kwargs, mask):
    """What the pooling needs from one forward call's arguments.

    Parameters
    ----------
    args : tuple
        Positional arguments of the model's forward.
    kwargs : dict or None
        Keyword arguments of the model's forward; None before any forward (empty context).
    mask : str, callable or None
        The keyword argument holding the attention mask, a callable
        ``(args, kwargs) -> tensor or None``, or None (no mask).

    Returns
    -------
    context : dict
        ``mask``, ``word_ids`` and ``cross_tokenizer`` for :func:`pool`.
    stripped : dict or None
        ``kwargs`` without repsim's reserved entries (``repsim_mask``,
        ``repsim_word_ids``, ``repsim_cross_tokenizer``); None when there were none.
    """
    if kwargs is None:  # no forward yet (the hooks were just registered)
        return {}, None
    if set(kwargs) == {"a", "b"} and all(isinstance(v, dict) and "repsim_word_ids" in v
                                         for v in kwargs.values()):
        raise ValueError(
            "the model got a batch of word_aligned_batches for two tokenizers as is; pass "
            "forward=batches.forward(model_a, model_b) so that each model gets its own encoding"
        )
    stripped = None
    if any(k in kwargs for k in RESERVED):
        stripped = {k: v for k, v in kwargs.items() if k not in RESERVED}
    if "repsim_mask" in kwargs:
        found = kwargs["repsim_mask"]
    elif callable(mask):
        found = mask(args, kwargs if stripped is None else stripped)
    elif isinstance(mask, str):
        found = kwargs.get(mask)
    else:
        found = None
    if found is not None and not isinstance(found, torch.Tensor):
        raise TypeError(f"the attention mask must be a tensor; got {type(found).__name__}")
    context = {"mask": found, "word_ids": kwargs.get("repsim_word_ids"),
               "cross_tokenizer": bool(kwargs.get("repsim_cross_tokenizer", False))}
    return context, stripped
