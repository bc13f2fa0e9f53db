"""PyTorch adapter: hook any model, stream every layer into minibatch CKA.

Forward hooks on the selected modules turn each layer's output into its ``n x n`` gram the
moment the layer runs (so in-place operations later in the forward cannot corrupt it, and
no activation outlives its layer); at the end of each batch the grams go to
:meth:`repsim.MinibatchCKA.update_grams`, which centres them and pairs all layers with one
matrix product. Under :mod:`torch.distributed` every process runs its shard of the data
and the accumulator's sum states are all-reduced before the result is computed.

This module imports torch; ``import repsim`` loads it only when one of its names is used.
It gathers the adapter's public names from modules of one responsibility each:
``_selection`` (:func:`select_layers`, :func:`unwrap_model`), ``_hooks``
(:class:`GramHooks`), ``pooling`` (the mask-aware pooling policies), ``_distributed``
(sharding, :func:`all_reduce_accumulator`), ``_checkpoint`` (what identifies a
comparison, the file), ``_batches`` (the forward of one batch in ``_run_forward``, the
epoch/shard/resume generator ``_batches``), ``_options`` (the option groups
:class:`CaptureOptions`, :class:`StatisticsOptions`, :class:`RunOptions`) and ``_compare``
(:func:`compare_models`).

References
----------
Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?
Uncovering how neural network representations vary with width and depth", ICLR
(minibatch CKA over every pair of layers, section 3.1).
"""

from __future__ import annotations

from ._compare import compare_models
from ._options import CaptureOptions, RunOptions, StatisticsOptions
from ._distributed import all_reduce_accumulator  # noqa: F401  (documented helper)
from ._hooks import POOLINGS, REPEATS, GramHooks  # noqa: F401
from ._selection import select_layers, unwrap_model  # noqa: F401

__all__ = ["CaptureOptions", "GramHooks", "RunOptions", "StatisticsOptions", "compare_models",
           "select_layers"]
