"""The wide/deep study's building blocks: config, training, analyses, claims and report.

``examples/wide_deep_study.py`` is the entry point and reads top to bottom as the study;
this package holds what is too long to show there. Everything in it uses repsim's public
API only. Modules:

- :mod:`wide_deep.config`: defaults, config files and flags, up-front validation, the grid;
- :mod:`wide_deep.train`: data, the training loop, one atomic checkpoint record per model;
- :mod:`wide_deep.analyse`: per-model and cross-model measurements and their summaries;
- :mod:`wide_deep.mechanism`: what the block is made of, from the stored models (top-k PC
  removal, residual branch/stream norms, linear probes, dominant images, the dominant-
  example control in block-free models); :mod:`wide_deep.mechanism_report` its figure and
  report section;
- :mod:`wide_deep.exact`: exact small-sample tests (Fisher, permutation over seed labels,
  C5 with models as units) that report the smallest p-value their design allows;
- :mod:`wide_deep.claims`: the paper's claims C1-C5 and the follow-up, tested on the
  declared block, with the pre-declared "done when" criteria;
- :mod:`wide_deep.report`: figures, ``report.md`` and the console lines.
"""
