"""A Lightning callback that tracks layer-wise CKA during training.

Requires ``lightning`` (``pip install "repsim-cka[integrations]"``); ``import repsim`` does
not import it.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
import xarray as xr
from lightning.pytorch import Callback

from ..adapters._compare import compare_models

__all__ = ["CKACallback"]

#: compare_models options the callback sets itself
_OWN = ("progress", "epochs", "model_a", "model_b", "loader", "layers_a", "layers_b",
        "checkpoint", "accumulator", "hooks")


class CKACallback(Callback):
    """Log CKA between each layer of the model in training and the same layer of the
    initial weights (or of a reference model) every N epochs.

    At the start of every ``every_n_epochs``-th training epoch (epoch 0 included, before any
    step) the model and the reference run over ``data`` through
    :func:`repsim.compare_models` (minibatch CKA, in eval mode and inference mode, the
    training flags and torch's RNG state restored afterwards, so training is unchanged),
    and the diagonal -- layer ``i`` against reference layer ``i`` -- is logged with
    ``pl_module.log`` as ``"<prefix>/<layer name>"`` (one value per epoch, so the logger of
    the user's choice records it, and ``EarlyStopping``/``ModelCheckpoint`` can monitor
    it). When training ends, the final weights are measured too and written to the
    trainer's loggers directly (``log_metrics`` at the last step, with its ``epoch``).
    Every measured matrix is kept in :attr:`history`.

    Parameters
    ----------
    data : iterable
        The batches to measure on (a list of tensors, a ``DataLoader``; as for
        :func:`repsim.compare_models`), the same every time: a fixed held-out set.
    layers : layer spec
        The modules of the LightningModule to compare (:func:`repsim.select_layers`,
        names as in ``pl_module.named_modules()``); name them explicitly, since a
        LightningModule may hold modules (metrics, losses) that never run in ``forward``.
    reference : "initial" or torch.nn.Module, default "initial"
        ``"initial"``: a copy of the module's weights when fitting starts. A module: a
        fixed reference model (a pretrained network, another run), on the same device.
    reference_layers : layer spec, optional
        The reference's layers, paired by position with ``layers`` (default: the same
        names).
    every_n_epochs : int, default 1
    prefix : str, default "cka"
    **options
        More options of :func:`repsim.compare_models` (``estimator``, ``kernel``,
        ``pooling``, ``forward``, ``groups``, ...).

    Attributes
    ----------
    history : dict epoch -> xarray.DataArray
        The full layer x reference-layer matrix of every measurement (the key of the final
        one is the number of epochs trained).

    Examples
    --------
    ::

        from lightning.pytorch import Trainer
        from lightning.pytorch.loggers import CSVLogger
        from repsim.integrations.lightning import CKACallback

        cka = CKACallback(held_out_batches, layers=["net.0", "net.2", "net.4"])
        Trainer(max_epochs=10, logger=CSVLogger("logs"), callbacks=[cka]).fit(module, loader)
        # logs/.../metrics.csv: columns cka/net.0, cka/net.2, cka/net.4, epoch, step
    """

    def __init__(self, data: Iterable[Any], layers: Any, *, reference: Any = "initial",
                 reference_layers: Any = None, every_n_epochs: int = 1, prefix: str = "cka",
                 **options: Any) -> None:
        if not (isinstance(every_n_epochs, int) and not isinstance(every_n_epochs, bool)
                and every_n_epochs >= 1):
            raise ValueError(f"every_n_epochs must be an integer >= 1; got {every_n_epochs!r}")
        if not (reference == "initial" if isinstance(reference, str)
                else isinstance(reference, torch.nn.Module)):
            raise TypeError(f"reference must be 'initial' or a torch.nn.Module; got {reference!r}")
        clash = sorted(set(options) & set(_OWN))
        if clash:
            raise ValueError(f"the callback sets {clash} itself; pass data, layers and "
                             "reference_layers instead")
        self.data, self.layers, self.reference = data, layers, reference
        self.reference_layers = layers if reference_layers is None else reference_layers
        self.every_n_epochs, self.prefix, self.options = every_n_epochs, prefix, options
        self.history: dict[int, xr.DataArray] = {}
        self._reference_model: torch.nn.Module | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if isinstance(self.reference, str):  # the weights before any step
            self._reference_model = copy.deepcopy(pl_module)  # (drops its trainer)
        else:
            self._reference_model = self.reference

    def _measure(self, pl_module: Any, epoch: int) -> dict[str, float]:
        # compare_models runs in eval and inference mode and restores the training flags
        # and torch's RNG state (it seeds its own), so training goes on as without it
        sim = compare_models(pl_module, self._reference_model, self.data, self.layers,
                             self.reference_layers, progress=False, **self.options)
        if sim.sizes["layer_a"] != sim.sizes["layer_b"]:
            raise ValueError(f"layers ({sim.sizes['layer_a']}) and reference_layers "
                             f"({sim.sizes['layer_b']}) must pair one to one")
        self.history[epoch] = sim
        names = [str(v) for v in sim["layer_a"].values]
        values = sim.values
        return {f"{self.prefix}/{name}": float(values[i, i]) for i, name in enumerate(names)}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs:
            return
        for key, value in self._measure(pl_module, epoch).items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if epoch in self.history:
            return
        metrics: dict[str, float] = {**self._measure(pl_module, epoch), "epoch": epoch}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
