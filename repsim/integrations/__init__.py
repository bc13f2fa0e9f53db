"""Similarity during training, through the training libraries' own interfaces.

- :mod:`repsim.integrations.torchmetrics`: :class:`MinibatchCKAMetric`, a
  ``torchmetrics.Metric`` over :class:`repsim.MinibatchCKA`'s declared sum states (so
  torchmetrics syncs them across processes);
- :mod:`repsim.integrations.lightning`: :class:`CKACallback`, a Lightning callback that
  logs layer-wise CKA against the initial weights or a reference model every N epochs.

Neither is imported by ``import repsim``; each imports its library on import (install
them with ``pip install "repsim-cka[integrations]"``).
"""
