import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def kornblith_demo():
    """The public demo data of Kornblith et al. (legacy seed 1337)."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = x + np.random.randn(100, 10)
    return x, y
