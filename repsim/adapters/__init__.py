"""Framework adapters: hook models and stream their layers into repsim's accumulators.

:mod:`repsim.adapters.torch` (PyTorch) is imported only when one of its public names
(:func:`repsim.compare_models`, :class:`repsim.GramHooks`, :func:`repsim.select_layers`)
is first used, so ``import repsim`` never imports torch.
"""
