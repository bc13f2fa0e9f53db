"""The algebra of :class:`repsim.FeatureMoments`' layout: a batch's rows ``z`` (features
and their squared norms per layer), adding their product to the sums, and re-expressing
the sums on another shift and scale (:meth:`~repsim.FeatureMoments.merge`, ``sync``)."""

from __future__ import annotations

import numpy as np

from . import _backend as B
from . import _moment_formulas as F


def add_cross_product(acc, z, xp, max_block_bytes=2**26):
    """``acc += zᵀ z`` in place (``acc`` (m, m), ``z`` (n, m)) by row blocks of ``acc``: no
    second ``(D + L)²`` array (each block's temporary is at most ``max_block_bytes``)."""
    m = int(z.shape[1])
    rows = max(1, min(m, max_block_bytes // (8 * max(m, 1))))
    for lo in range(0, m, rows):
        hi = min(lo + rows, m)
        acc[lo:hi, :] += xp.matmul(z[:, lo:hi].T, z)
    return acc


def augment(xs, widths, xp):
    """``[xs, a]`` with ``a[:, l] = ||xs_l||²`` row-wise per layer: ``(n, D + L)``."""
    norms = [xp.sum(xs[:, sl] * xs[:, sl], axis=1)[:, None] for sl in slices(widths)]
    return xp.concat([xs] + norms, axis=1)


def reexpress(widths, values, old, new, chunk=1024):
    """Re-express a state dict's ``n``, ``sum_z``, ``zz`` (per fold) on the layout ``new =
    (shift, exponents)`` from ``old``, in place, and return them.

    The shift, in ``old``'s units: with ``δ = (new - old shift) 2**-e_old``, ``x' = x - δ``
    and ``a'_l = a_l - 2 δ_lᵀ x_l + ||δ_l||²``, i.e. ``z' = (I + E) z + c`` (``E`` nonzero
    in its last ``L`` rows): ``Σz' = (I + E) Σz + n c``, ``Σz'z'ᵀ = (I+E) Σzzᵀ (I+E)ᵀ +
    (I+E)Σz cᵀ + c ((I+E)Σz)ᵀ + n c cᵀ`` (``O(L D²)``; rank-one terms ``chunk`` rows at a
    time). Then the scale: layer ``l``'s columns times ``r_l = 2**(e_old - e_new)``, its
    norm column times ``r_l²``. Exact up to rounding."""
    xp, dev = B.namespace(values["zz"]), B.device(values["zz"])
    delta = (np.asarray(new[0]) - np.asarray(old[0])) / np.repeat(np.ldexp(1.0, old[1]), widths)
    ratio = np.ldexp(1.0, [a - b for a, b in zip(old[1], new[1])])
    d = len(delta)
    ind = F.block_indicator(widths, xp, dev)
    e = -2.0 * (ind * xp.asarray(delta, device=dev)[:, None]).T  # (L, D)
    c = xp.asarray(np.concatenate([-delta, [float(np.sum(delta[s] ** 2)) for s in
                                            slices(widths)]]), device=dev)
    scale = xp.asarray(np.concatenate([np.repeat(ratio, widths), ratio ** 2]), device=dev)
    for f in range(values["zz"].shape[0]):
        g, sz = values["zz"][f], values["sum_z"][f]  # views into the states
        n = float(B.item(values["n"][f]))
        g[d:, :] += xp.matmul(e, g[:d, :])  # (I + E) G
        g[:, d:] += xp.matmul(g[:, :d], e.T)  # ... (I + E)^T
        sz[d:] += xp.matmul(e, sz[:d])  # (I + E) Σz
        for lo in range(0, g.shape[0], chunk):
            hi = min(lo + chunk, g.shape[0])
            g[lo:hi, :] += (sz[lo:hi, None] * c[None, :] + c[lo:hi, None] * sz[None, :]
                            + n * c[lo:hi, None] * c[None, :])
            g[lo:hi, :] *= scale[lo:hi, None] * scale[None, :]
        sz += n * c
        sz *= scale
    return values


def slices(widths):
    """The column slice of each layer in the concatenated features."""
    bounds = np.cumsum([0] + list(widths))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
