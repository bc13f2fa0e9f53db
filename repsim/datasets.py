"""Small image datasets for the wide/deep study: CIFAR-10 and scikit-learn's digits.

* :func:`load_cifar10` reads the standard CIFAR-10 "python version" batches
  (Krizhevsky, 2009) with a restricted unpickler that rebuilds only the types those files
  contain (dicts, lists, str/bytes, ints and one numpy ``uint8`` array), so a tampered
  batch file cannot run code.
* :func:`download_cifar10` fetches the official archive into a cache folder with a
  progress bar, verifies its MD5 checksum and extracts it atomically.
* :func:`load_digits_images` turns scikit-learn's bundled 8×8 handwritten digits into an
  image dataset with a seeded train/test split, so the study's default needs no download.

Only numpy (and scikit-learn for the digits, tqdm optionally for the progress bar) are
used; torch is not imported.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "download_cifar10",
    "load_cifar10",
    "load_digits_images",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)

# The only globals a CIFAR-10 batch pickle refers to: numpy's array reconstructor (its
# module moved from numpy.core to numpy._core in numpy 2), ndarray and dtype.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-reconstruction globals."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _reconstruct if name == "_reconstruct" else getattr(np, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name} from a CIFAR-10 batch file; "
            "expected only numpy arrays, dicts, lists, strings and ints"
        )


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: images ``(m, 3, 32, 32)`` uint8 and labels ``(m,)`` int64."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise ValueError(f"{path} is not a readable CIFAR-10 batch file: {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    # Python 2 files give str keys (latin1); files pickled from Python 3 bytes keep bytes
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or not ("labels" in batch or "fine_labels" in batch):
        raise ValueError(f"{path}: expected keys 'data' and 'labels', got {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: expected 'data' of shape (m, 3072) and dtype uint8, "
            f"got shape {data.shape} and dtype {data.dtype}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected {data.shape[0]} labels, got array of shape {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from the standard python batches.

    Parameters
    ----------
    data_dir : str or path-like
        Folder holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (the
        ``cifar-10-batches-py`` folder of the official archive), or its parent.
    train : bool, default True
        The 50,000 training images (five batches, in file order) or the 10,000 test
        images.

    Returns
    -------
    images : ndarray of uint8, shape (m, 3, 32, 32)
        Channel-first RGB images, values 0..255.
    labels : ndarray of int64, shape (m,)
        Class indices 0..9 (names in :data:`CIFAR10_CLASSES`).

    Raises
    ------
    FileNotFoundError
        If a batch file is missing.
    pickle.UnpicklingError
        If a file refers to anything but numpy arrays and plain containers.
    ValueError
        If a file does not have the CIFAR-10 layout.

    Notes
    -----
    Files are parsed with a restricted :class:`pickle.Unpickler` whose ``find_class``
    allows only ``numpy.(_)core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``. Both the original files (bytes keys) and re-pickled copies with str
    keys load.

    References
    ----------
    Krizhevsky, A. (2009). Learning multiple layers of features from tiny images.
    Technical report, University of Toronto.
    """
    root = Path(data_dir).expanduser()
    if not (root / "test_batch").exists() and (root / CIFAR10_DIRNAME / "test_batch").exists():
        root = root / CIFAR10_DIRNAME
    names = _TRAIN_BATCHES if train else _TEST_BATCHES
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batch files {missing} not found in {root}; expected the "
            f"'{CIFAR10_DIRNAME}' folder of {CIFAR10_URL} (see download_cifar10)"
        )
    parts = [_load_batch(root / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
        raise ValueError(f"refusing to extract archive member with unsafe path {name!r}")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"refusing to extract archive member {name!r}: not a regular file or folder")


def download_cifar10(
    root=None,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch the CIFAR-10 python archive into a cache folder and extract it.

    Parameters
    ----------
    root : str or path-like, optional
        Cache folder; default ``$REPSIM_CACHE`` or ``~/.cache/repsim``.
    url : str, default :data:`CIFAR10_URL`
        Where to fetch ``cifar-10-python.tar.gz`` from.
    md5 : str or None, default :data:`CIFAR10_MD5`
        Expected MD5 of the archive; ``None`` skips the check (not recommended).
    progress : bool, default True
        Show a tqdm progress bar while downloading (if tqdm is installed).
    timeout : float, default 60
        Socket timeout in seconds.

    Returns
    -------
    pathlib.Path
        The extracted ``cifar-10-batches-py`` folder, ready for :func:`load_cifar10`.

    Raises
    ------
    ConnectionError
        If the archive cannot be fetched (offline, host unreachable, HTTP error); the
        message names the URL and how to supply the files by hand.
    ValueError
        If the archive's checksum does not match (the file is deleted), or it contains a
        member with an absolute path, a ``..`` component, a link or a device.

    Notes
    -----
    Nothing is fetched when the extracted folder already exists. The archive is written
    to a temporary file and renamed once complete and verified; it is extracted into a
    temporary folder beside the destination, which is then renamed into place, so an
    interrupted download or extraction never leaves a partial dataset behind.
    """
    root = Path(root if root is not None else os.environ.get("REPSIM_CACHE", "~/.cache/repsim"))
    root = root.expanduser()
    target = root / CIFAR10_DIRNAME
    if (target / "test_batch").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rstrip("/").rsplit("/", 1)[-1]
    if not archive.is_file():
        _fetch(url, archive, progress=progress, timeout=timeout)
    if md5 is not None:
        digest = _md5(archive)
        if digest != md5.lower():
            archive.unlink()
            raise ValueError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {digest}; "
                "the corrupt download was deleted, run again to retry"
            )
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            try:
                tar.extractall(tmp, members=members, filter="data")
            except TypeError:  # Python without extraction filters
                tar.extractall(tmp, members=members)
        extracted = tmp / CIFAR10_DIRNAME
        if not extracted.is_dir():
            raise ValueError(f"archive {archive} has no '{CIFAR10_DIRNAME}' folder")
        try:
            os.replace(extracted, target)
        except OSError:
            if not (target / "test_batch").is_file():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress_bar(total, dest.name, progress)
            try:
                with open(part, "wb") as f:
                    while True:
                        chunk = response.read(1 << 16)
                        if not chunk:
                            break
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"could not download CIFAR-10 from {url} ({reason}). Are you offline? "
            f"Fetch the archive by hand and pass the extracted '{CIFAR10_DIRNAME}' "
            "folder as data_dir (--data-dir in the study)."
        ) from exc
    os.replace(part, dest)


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def load_digits_images(
    test_size: int = 500,
    seed: int = 0,
    *,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as an image classification dataset.

    Parameters
    ----------
    test_size : int, default 500
        Number of held-out images; the remaining ``1797 - test_size`` are for training.
    seed : int, default 0
        Seed of the split: ``numpy.random.default_rng(seed).permutation(1797)``; the first
        ``test_size`` indices are the test set, the rest the training set (both in
        permutation order).
    normalize : bool, default True
        Scale pixels (0..16) to zero mean and unit variance using the training images'
        mean and standard deviation; otherwise return raw values divided by 16.

    Returns
    -------
    x_train : ndarray of float32, shape (1797 - test_size, 1, 8, 8)
    y_train : ndarray of int64, shape (1797 - test_size,)
    x_test : ndarray of float32, shape (test_size, 1, 8, 8)
    y_test : ndarray of int64, shape (test_size,)

    Notes
    -----
    The digits (Alpaydin & Kaynak, UCI optical recognition of handwritten digits; 1,797
    images of 10 classes) ship with scikit-learn, so this needs no download.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer)) or not 0 < test_size < n:
        raise ValueError(f"test_size must be an integer in 1..{n - 1}, got {test_size!r}")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:test_size], perm[test_size:]
    x = (digits.images[:, None, :, :] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    if normalize:
        mean, std = x[train].mean(), x[train].std()
        x = ((x - mean) / std).astype(np.float32)
    return x[train], y[train], x[test], y[test]
