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

import codecs
import hashlib
import http.client
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

from ._io import atomic_write, progress as _progress

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[attr-defined,no-redef]

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

class _RefusedGlobal(pickle.UnpicklingError):
    """A batch file refers to a global outside :data:`_ALLOWED_GLOBALS`."""


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise _RefusedGlobal(
            f"refusing _codecs.encode with encoding {encoding!r} in a CIFAR-10 batch file"
        )
    return codecs.encode(text, "latin1", errors)


# The only globals a CIFAR-10 batch pickle refers to: numpy's array reconstructor (its
# module moved from numpy.core to numpy._core in numpy 2), ndarray and dtype; numpy's
# _frombuffer for arrays pickled with protocol 5; _codecs.encode, with which protocol 2
# stores bytes objects written by Python 3.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-reconstruction globals."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"refusing to load global {module}.{name} from a CIFAR-10 batch file; "
                "expected only numpy arrays, dicts, lists, strings and ints"
            ) from None


def _labels(values, path: Path) -> np.ndarray:
    """Class indices as int64, refusing non-integers and values outside 0..9."""
    raw = np.asarray(values)
    if raw.dtype.kind not in "iu" or raw.ndim != 1:
        raise ValueError(
            f"{path}: labels must be a list of integers 0..9; got an array of dtype "
            f"{raw.dtype} and shape {raw.shape}"
        )
    bad = (raw < 0) | (raw > 9)
    if bad.any():
        shown = sorted({int(v) for v in raw[bad]})[:5]
        raise ValueError(
            f"{path}: labels must be class indices 0..9; got {int(bad.sum())} outside that "
            f"range (values {shown})"
        )
    return raw.astype(np.int64)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: images ``(m, 3, 32, 32)`` uint8 and labels ``(m,)`` int64."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise pickle.UnpicklingError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise ValueError(
            f"{path} is not a readable CIFAR-10 batch file (truncated or not a pickle): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    # Python 2 files give str keys (latin1); files pickled from Python 3 bytes keep bytes
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or not ("labels" in batch or "fine_labels" in batch):
        raise ValueError(f"{path}: expected keys 'data' and 'labels', got {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = _labels(batch.get("labels", batch.get("fine_labels")), path)
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


def load_cifar10(data_dir: str | os.PathLike, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
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
        If a file does not have the CIFAR-10 layout, is truncated (the message names the
        file), or holds labels that are not integers 0..9.

    Notes
    -----
    Files are parsed with a restricted :class:`pickle.Unpickler` whose ``find_class``
    allows only ``numpy.(_)core.multiarray._reconstruct``,
    ``numpy.(_)core.numeric._frombuffer`` (protocol 5), ``numpy.ndarray``,
    ``numpy.dtype`` and a latin-1-only ``_codecs.encode`` (how protocol 2 stores bytes).
    Both the original files (Python 2, bytes keys) and copies re-pickled by Python 3 with
    protocols 2 to 5, with bytes or str keys, load.

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
    root: str | os.PathLike | None = None,
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
        Show the download's progress: a tqdm bar on a terminal or in Jupyter (when tqdm
        is installed), one plain line in a non-interactive log.
    timeout : float, default 60
        Socket timeout in seconds.

    Returns
    -------
    pathlib.Path
        The extracted ``cifar-10-batches-py`` folder, ready for :func:`load_cifar10`.

    Raises
    ------
    ConnectionError
        If the archive cannot be fetched (offline, host unreachable, HTTP error) or the
        server sends fewer bytes than its Content-Length; the message names the URL.
    ValueError
        If the archive's checksum does not match, it is not a readable tar archive, or
        it contains a member with an absolute path, a ``..`` component, a link or a
        device.

    Notes
    -----
    Nothing is fetched when the extracted folder already holds every batch file. The
    archive is written to a temporary file and kept (renamed into the cache) only once its length matches the server's
    Content-Length, its MD5 matches and it reads as a tar archive to its end: a failed
    download is never cached, and a cached archive that fails these checks is fetched
    again. It is extracted into a temporary folder beside the destination, which is then
    renamed into place; an incomplete ``cifar-10-batches-py`` folder found in the cache
    (an interrupted extraction, a partial copy) is removed and replaced.
    """
    root = Path(root if root is not None else os.environ.get("REPSIM_CACHE", "~/.cache/repsim"))
    root = root.expanduser()
    target = root / CIFAR10_DIRNAME
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rstrip("/").rsplit("/", 1)[-1]
    if archive.is_file():
        try:  # a cache written by an older version may hold a failed download
            _verify_archive(archive, url, md5)
        except ValueError:
            archive.unlink()
    if not archive.is_file():
        atomic_write(archive, lambda tmp: _fetch_verified(url, Path(tmp), md5, progress, timeout,
                                                          archive.name))
    if target.exists():  # a partial folder left by an interrupted extraction or by hand
        aside = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            os.replace(target, aside / CIFAR10_DIRNAME)
        except FileNotFoundError:
            pass  # a concurrent call moved it
        shutil.rmtree(aside, ignore_errors=True)
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
        if not _complete(extracted):
            raise ValueError(
                f"archive {archive} has no complete '{CIFAR10_DIRNAME}' folder (expected "
                f"{', '.join(_TRAIN_BATCHES + _TEST_BATCHES)})"
            )
        try:
            os.replace(extracted, target)
        except OSError:
            if not _complete(target):  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds every CIFAR-10 batch file."""
    return all((folder / name).is_file() for name in _TRAIN_BATCHES + _TEST_BATCHES)


def _verify_archive(path: Path, url: str, md5: str | None) -> None:
    """Raise ValueError unless ``path`` has the expected MD5 and reads as a tar archive
    to its end (a truncated or non-tar file fails here, before it is cached)."""
    if md5 is not None:
        digest = _md5(path)
        if digest != md5.lower():
            raise ValueError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {digest}; "
                "the corrupt download was not kept, run again to retry"
            )
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.getmembers()  # reads the whole stream: detects a truncated archive
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(
            f"the download from {url} is not a readable tar archive "
            f"({' '.join(str(exc).split())}); it was not "
            "kept, run again to retry"
        ) from None


def _fetch_verified(url: str, dest: Path, md5: str | None, progress: bool, timeout: float,
                    desc: str) -> None:
    """Download ``url`` into ``dest`` and verify its length, checksum and tar format."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            got = 0
            with _progress(total=total, desc=desc, enabled=progress, unit="B", unit_scale=True) as bar, \
                    open(dest, "wb") as f:
                while True:
                    chunk = response.read(1 << 16)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"could not download CIFAR-10 from {url} ({reason}). Are you offline? "
            f"Fetch the archive by hand and pass the extracted '{CIFAR10_DIRNAME}' "
            "folder as data_dir (--data-dir in the study)."
        ) from exc
    if total is not None and got != total:
        raise ConnectionError(
            f"the download from {url} ended early: got {got} of {total} bytes "
            "(Content-Length); nothing was cached, run again to retry"
        )
    _verify_archive(dest, url, md5)


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
