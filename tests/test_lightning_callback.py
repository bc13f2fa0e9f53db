"""The Lightning callback on a two-epoch tiny run with Lightning's CSV logger: its columns,
CKA 1 against the initial weights at epoch 0, values in [0, 1] equal to the kept matrices,
and the training itself unchanged by the measurements."""

from __future__ import annotations

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch import nn  # noqa: E402

import repsim  # noqa: E402
from repsim.integrations.lightning import CKACallback  # noqa: E402

LAYERS = ["net.0", "net.2", "net.4"]


class Tiny(pl.LightningModule):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        # net.0, net.2, net.4: the linear layers; dropout and a shuffling loader make the
        # training draw from torch's RNG
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Dropout(0.2),
                                 nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit(tmp_path, callbacks, name):
    torch.manual_seed(0)
    x = torch.randn(96, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32,
                                         shuffle=True)
    module = Tiny()
    trainer = pl.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name=name), callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=1, accelerator="cpu",
                         devices=1)
    trainer.fit(module, loader)
    return module, trainer


def held_out():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(24, 8, generator=g) for _ in range(2)]


def test_callback_logs_layer_cka_to_the_csv_logger(tmp_path):
    cb = CKACallback(held_out(), LAYERS)
    module, trainer = fit(tmp_path, [cb], "cka")
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [f"cka/{name}" for name in LAYERS]
    assert set(keys) | {"epoch", "step", "loss"} == set(rows[0])
    logged = [r for r in rows if r[keys[0]]]
    assert [int(float(r["epoch"])) for r in logged] == [0, 1, 2]  # epoch starts, then the end
    values = np.array([[float(r[k]) for k in keys] for r in logged])
    assert (values[0] == 1.0).all()  # the initial weights against themselves
    assert ((values >= 0) & (values <= 1)).all() and (values[1:] < 1).any()
    assert sorted(cb.history) == [0, 1, 2]
    for row, epoch in zip(values, (0, 1, 2)):  # the logged values are the matrices' diagonals
        np.testing.assert_allclose(row, np.diag(cb.history[epoch].values), rtol=1e-6)
    # the last one: the trained weights against the initial ones, measured independently
    initial = Tiny()
    want = repsim.compare_models(module, initial, held_out(), LAYERS, LAYERS, progress=False)
    np.testing.assert_allclose(values[2], np.diag(want.values), rtol=0, atol=1e-12)
    # the measurements changed nothing of the training (RNG state and modes restored)
    plain, _ = fit(tmp_path, [], "plain")
    for p, q in zip(module.parameters(), plain.parameters()):
        assert torch.equal(p, q)


def test_callback_against_a_reference_model_every_other_epoch(tmp_path):
    reference = nn.Sequential(nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 4))
    cb = CKACallback(held_out(), ["net.0", "net.4"], reference=reference,
                     reference_layers=["0", "2"], every_n_epochs=2, prefix="ref")
    _, trainer = fit(tmp_path, [cb], "ref")
    assert sorted(cb.history) == [0, 2]
    assert cb.history[0].layer_b.values.tolist() == ["0", "2"]
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["ref/net.0"]]
    assert [int(float(r["epoch"])) for r in rows] == [0, 2]
    with pytest.raises(ValueError, match="every_n_epochs"):
        CKACallback(held_out(), LAYERS, every_n_epochs=0)
    with pytest.raises(ValueError, match="sets .*progress"):
        CKACallback(held_out(), LAYERS, progress=True)
