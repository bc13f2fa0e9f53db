"""The one atomic file write and the one progress display that repsim uses.

* :func:`atomic_write` -- write to a temporary file beside the target, flush it to disk,
  then rename it over the target, so an interrupted write never leaves a truncated file.
  The new file gets the target's permission bits when it replaces one, else the default
  of a newly created file (``0o666`` less the process umask) -- not the ``0o600`` of
  :func:`tempfile.mkstemp`.
* :func:`progress` -- a tqdm bar when the output is interactive (a terminal or a Jupyter
  kernel), one plain line per stage when it is not (a CI log, ``nohup``, a file), and
  nothing when switched off or when tqdm is not installed.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

__all__ = ["atomic_write", "progress", "remove_stale_temporaries"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Write a file atomically: ``write(tmp)`` into a temporary path, then rename.

    Parameters
    ----------
    path : str or os.PathLike
        The destination. Its folder is created if missing.
    write : callable
        ``write(tmp_path)`` writes the complete file at ``tmp_path`` (a ``str`` in the
        destination's folder; the file already exists, empty, with its final mode).

    Notes
    -----
    The temporary file is created with ``os.open(..., 0o666)`` so that the process umask
    applies, exactly as for a file the caller would have opened itself; when ``path``
    exists its mode is copied (overwriting a ``0o644`` result keeps ``0o644``). The data
    are flushed with :func:`os.fsync` before :func:`os.replace`, which is atomic on POSIX
    and Windows when both paths are on one file system. On any error (or interrupt) the
    temporary file is removed and the target is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _temporary_name(os.path.basename(path)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _temporary_name(base: str) -> str:
    """``.{base}.{pid}-{12 hex}.tmp``: hidden, beside the target, and naming its writer."""
    return f".{base}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove what an interrupted :func:`atomic_write` of ``path`` left beside it.

    A process killed during a write (SIGKILL, power loss) cannot remove its temporary
    file. This removes only files named exactly as :func:`atomic_write` names its
    temporaries for this target (``.{name}.{pid}-{12 hex digits}.tmp``) whose writing
    process no longer runs on this machine -- never another file, and never the
    temporary of a write still under way.

    Returns
    -------
    list of str
        The paths removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.") + r"(\d+)-[0-9a-f]{12}\.tmp")
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match is None or _running(int(match.group(1))):
            continue
        full = os.path.join(folder, entry)
        try:
            if os.path.isfile(full) and not os.path.islink(full):
                os.unlink(full)
                removed.append(full)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but belongs to someone else, or cannot be asked: keep it
    return True


def _interactive(stream: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel (whose streams are not TTYs but render widgets)."""
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return "ipykernel" in sys.modules


class _Silent:
    """No display: iterates its iterable, ignores updates."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lines(_Silent):
    """One line per stage for a non-interactive log: written when the stage ends."""

    def __init__(self, iterable, total, desc, unit, unit_scale, stream, initial=0):
        super().__init__(iterable)
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.stream, self.n, self.start, self.closed = stream, initial, time.perf_counter(), False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in super().__iter__():
                yield item
                self.n += 1
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def _amount(self, v: float) -> str:
        if not self.unit_scale:
            return f"{v:g}"
        for prefix in ("", "k", "M", "G", "T"):
            if abs(v) < 1024 or prefix == "T":
                return f"{v:.1f}{prefix}" if prefix else f"{v:g}"
            v /= 1024
        return f"{v:g}"  # pragma: no cover - the loop always returns

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        done = self._amount(self.n)
        if self.total is not None:
            done += f"/{self._amount(self.total)}"
        state = "" if self.total is None or self.n >= self.total else " (stopped early)"
        elapsed = time.perf_counter() - self.start
        print(f"{self.desc}: {done} {self.unit} in {elapsed:.1f} s{state}", file=self.stream,
              flush=True)


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    unit_scale: bool = False,
    leave: bool = False,
    file: IO[str] | None = None,
) -> Any:
    """Progress of one stage: a tqdm bar, one log line, or nothing.

    Parameters
    ----------
    iterable : iterable, optional
        Wrapped and iterated; without it, advance the display with ``.update(n)`` and end
        it with ``.close()`` (or use it as a context manager).
    total : int, optional
        Expected number of items (or bytes, with ``unit="B"``).
    initial : int, default 0
        Items already done before this display starts (a resumed run counts on from
        there).
    desc : str
        The stage's name, shown first.
    enabled : bool, default True
        False: no output at all.
    unit : str, default "it"
    unit_scale : bool, default False
        Scale amounts by 1024 (for bytes).
    leave : bool, default False
        Keep a tqdm bar on screen once it ends.
    file : text stream, optional
        Where to write; default :data:`sys.stderr`.

    Returns
    -------
    object
        Iterable over ``iterable`` with ``update(n)`` and ``close()``: a
        :class:`tqdm.tqdm` when the stream is interactive (a terminal or a Jupyter kernel)
        and tqdm is installed; when the stream is not interactive, an object that writes
        exactly one line when the stage ends (``"desc: 120/200 it in 3.4 s"``) instead of
        a bar's carriage returns and escape codes; when disabled, or tqdm is missing on
        an interactive stream, a silent one.
    """
    if not enabled:
        return _Silent(iterable)
    stream = file if file is not None else sys.stderr
    if not _interactive(stream):
        return _Lines(iterable, total, desc, unit, unit_scale, stream, initial)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional (the "progress" extra)
        return _Silent(iterable)
    kwargs: dict[str, Any] = dict(total=total, initial=initial, desc=desc, unit=unit,
                                  leave=leave, file=file)
    if unit_scale:
        kwargs.update(unit_scale=True, unit_divisor=1024)
    return tqdm(iterable, **kwargs)
