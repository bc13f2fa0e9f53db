import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading

import numpy as np
import pytest

from repsim.datasets import (
    download_cifar10,
    load_cifar10,
    load_digits_images,
)


def _batch(m, seed, str_keys=False):
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, m)],
        b"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(m)],
    }
    if str_keys:
        d = {k.decode(): (v.decode() if isinstance(v, bytes) else v) for k, v in d.items()}
    return d


def _dump(obj, f, protocol, old_numpy):
    data = pickle.dumps(obj, protocol=protocol)
    if protocol == 5:  # arrays through numpy's _frombuffer, not _reconstruct
        assert b"_frombuffer" in data
    if old_numpy:  # the module path that numpy 1.x (and the original files) use
        assert protocol == 3
        if b"cnumpy._core.multiarray\n" in data:
            data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"cnumpy.core.multiarray\n_reconstruct" in data
    f.write(data)


def _write_batches(folder, str_keys=False, protocol=4, old_numpy=False):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batches[name] = _batch(4 + i, i, str_keys)
        with open(folder / name, "wb") as f:
            _dump(batches[name], f, protocol, old_numpy)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10}, f, protocol=protocol)
    return batches


def _key(d, k):
    return d[k] if k in d else d[k.encode()]


@pytest.mark.parametrize("str_keys", [False, True])
@pytest.mark.parametrize("protocol, old_numpy", [(2, False), (3, False), (3, True), (4, False), (5, False)])
def test_reader_on_small_batches(tmp_path, str_keys, protocol, old_numpy):
    folder = tmp_path / "cifar-10-batches-py"
    batches = _write_batches(folder, str_keys, protocol, old_numpy)
    x, y = load_cifar10(folder, train=True)
    assert x.shape == (4 + 5 + 6 + 7 + 8, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.shape == (30,)
    first = batches["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major
    np.testing.assert_array_equal(x[0, 0].ravel(), _key(first, "data")[0, :1024])
    np.testing.assert_array_equal(x[0, 2, 31], _key(first, "data")[0, 3072 - 32:])
    np.testing.assert_array_equal(y[:4], _key(first, "labels"))
    xt, yt = load_cifar10(tmp_path, train=False)  # the parent folder works too
    assert xt.shape == (9, 3, 32, 32)
    np.testing.assert_array_equal(yt, _key(batches["test_batch"], "labels"))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_reader_refuses_foreign_globals(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_cifar10(folder, train=False)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path, train=True)
    folder = tmp_path / "c"
    _write_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(folder, train=False)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        load_cifar10(folder, train=False)


def _archive(tmp_path, evil_member=None):
    src = tmp_path / "src" / "cifar-10-batches-py"
    batches = _write_batches(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
        if evil_member is not None:
            info = tarfile.TarInfo(evil_member)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    data = buf.getvalue()
    return data, hashlib.md5(data).hexdigest(), batches


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 serving ``files[path] = bytes``."""
    files = {}
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            declared = len(body)
            if isinstance(body, tuple):  # (bytes, Content-Length to announce)
                body, declared = body
            self.send_response(200)
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, files, hits
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_extracts(tmp_path, server):
    base, files, hits = server
    data, md5, batches = _archive(tmp_path)
    files["/cifar-10-python.tar.gz"] = data
    cache = tmp_path / "cache"
    path = download_cifar10(cache, url=base + "/cifar-10-python.tar.gz", md5=md5, progress=False)
    assert path == cache / "cifar-10-batches-py"
    x, y = load_cifar10(path, train=False)
    np.testing.assert_array_equal(y, batches["test_batch"][b"labels"])
    assert not [p for p in cache.iterdir() if p.name.startswith(".extract-") or p.suffix == ".part"]
    # second call is served from the cache: no new request
    n = len(hits)
    assert download_cifar10(cache, url=base + "/cifar-10-python.tar.gz", md5=md5, progress=False) == path
    assert len(hits) == n


def test_download_with_progress_bar(tmp_path, server, capsys):
    base, files, _ = server
    data, md5, _ = _archive(tmp_path)
    files["/a.tar.gz"] = data
    download_cifar10(tmp_path / "cache", url=base + "/a.tar.gz", md5=md5, progress=True)
    assert "a.tar.gz" in capsys.readouterr().err


def test_download_bad_checksum(tmp_path, server):
    base, files, _ = server
    data, md5, _ = _archive(tmp_path)
    files["/cifar-10-python.tar.gz"] = data
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_cifar10(cache, url=base + "/cifar-10-python.tar.gz", md5="0" * 32, progress=False)
    assert not (cache / "cifar-10-batches-py").exists()
    assert not (cache / "cifar-10-python.tar.gz").exists()  # corrupt file removed


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "cifar-10-batches-py/../../x"])
def test_download_refuses_unsafe_members(tmp_path, server, member):
    base, files, _ = server
    data, md5, _ = _archive(tmp_path, evil_member=member)
    files["/c.tar.gz"] = data
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="unsafe path"):
        download_cifar10(cache, url=base + "/c.tar.gz", md5=md5, progress=False)
    assert not (cache / "cifar-10-batches-py").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_download_http_error_is_clear(tmp_path, server):
    base, _, _ = server
    with pytest.raises(ConnectionError, match="could not download CIFAR-10"):
        download_cifar10(tmp_path / "cache", url=base + "/missing.tar.gz", progress=False)
    assert not list((tmp_path / "cache").glob("*.part"))


def test_download_offline_is_clear(tmp_path):
    # a port on 127.0.0.1 that nothing listens on: connection refused, like being offline
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectionError, match="offline"):
        download_cifar10(tmp_path / "cache", url=f"http://127.0.0.1:{port}/c.tar.gz",
                         progress=False, timeout=5)


def test_digits_split_is_seeded_and_documented():
    xtr, ytr, xte, yte = load_digits_images()
    assert xtr.shape == (1297, 1, 8, 8) and xte.shape == (500, 1, 8, 8)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert abs(float(xtr.mean())) < 1e-5 and abs(float(xtr.std()) - 1) < 1e-5
    again = load_digits_images()
    for a, b in zip((xtr, ytr, xte, yte), again):
        np.testing.assert_array_equal(a, b)
    other = load_digits_images(seed=1)
    assert not np.array_equal(other[3], yte)
    raw = load_digits_images(test_size=100, normalize=False)
    assert raw[0].shape == (1697, 1, 8, 8) and raw[0].min() == 0 and raw[0].max() == 1
    with pytest.raises(ValueError, match="test_size"):
        load_digits_images(test_size=0)


# ----------------------------------------------------------------- hostile batches (issue 11)
@pytest.mark.parametrize("labels, match", [
    ([99, 0, 1, 2, 3, 4, 5, 6, 7], r"outside that range \(values \[99\]\)"),
    ([-5, 0, 1, 2, 3, 4, 5, 6, 7], r"outside that range \(values \[-5\]\)"),
    ([1.7, 0, 1, 2, 3, 4, 5, 6, 7], "labels must be a list of integers 0..9; got an array of dtype float64"),
    (np.arange(9) + 0.0, "dtype float64"),
    ([True] * 9, "dtype bool"),
    (["1"] * 9, "dtype <U1"),
])
def test_reader_refuses_bad_labels(tmp_path, labels, match):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((9, 3072), np.uint8), b"labels": labels}, f)
    with pytest.raises(ValueError, match=match) as err:
        load_cifar10(folder, train=False)
    assert str(folder / "test_batch") in str(err.value)


def test_reader_names_a_truncated_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"data_batch_3 is not a readable CIFAR-10 batch file \(truncated"):
        load_cifar10(folder, train=True)
    (folder / "test_batch").write_bytes(b"")
    with pytest.raises(ValueError, match="test_batch is not a readable"):
        load_cifar10(folder, train=False)


def test_protocol_2_codecs_is_latin1_only(tmp_path):
    """Protocol 2 stores bytes as _codecs.encode(text, 'latin1'); no other codec passes."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    evil = (b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01c_codecs\nencode\nq\x02X\x01\x00\x00\x00a"
            b"X\x06\x00\x00\x00rot_13\x86Rq\x03u.")
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing _codecs.encode with encoding 'rot_13'"):
        load_cifar10(folder, train=False)


def _nothing_cached(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_short_body_is_not_cached(tmp_path, server):
    base, files, hits = server
    data, md5, batches = _archive(tmp_path)
    files["/c.tar.gz"] = (data[:-100], len(data))  # the connection drops 100 bytes early
    cache = tmp_path / "cache"
    for check in (md5, None):
        with pytest.raises(ConnectionError, match=f"ended early: got {len(data) - 100} of {len(data)} bytes"):
            download_cifar10(cache, url=base + "/c.tar.gz", md5=check, progress=False)
        assert _nothing_cached(cache) == []
    files["/c.tar.gz"] = data  # the retry downloads again and succeeds
    n = len(hits)
    path = download_cifar10(cache, url=base + "/c.tar.gz", md5=md5, progress=False)
    assert len(hits) == n + 1
    np.testing.assert_array_equal(load_cifar10(path, train=False)[1], batches["test_batch"][b"labels"])
    assert _nothing_cached(cache) == ["c.tar.gz", "cifar-10-batches-py"]


@pytest.mark.parametrize("body", [b"<html>503 Service Unavailable</html>", "truncated"])
def test_download_non_tar_body_is_not_cached(tmp_path, server, body):
    base, files, _ = server
    data, md5, _ = _archive(tmp_path)
    body = data[: len(data) // 2] if body == "truncated" else body  # a complete HTTP reply
    files["/c.tar.gz"] = body
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="is not a readable tar archive.*not kept"):
        download_cifar10(cache, url=base + "/c.tar.gz", md5=None, progress=False)
    assert _nothing_cached(cache) == []
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_cifar10(cache, url=base + "/c.tar.gz", md5=md5, progress=False)
    assert _nothing_cached(cache) == []
    files["/c.tar.gz"] = data
    assert download_cifar10(cache, url=base + "/c.tar.gz", md5=None, progress=False).is_dir()


def test_download_replaces_a_bad_cached_archive(tmp_path, server):
    """An archive cached by an older version from a failed download is fetched again."""
    base, files, hits = server
    data, md5, _ = _archive(tmp_path)
    files["/c.tar.gz"] = data
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "c.tar.gz").write_bytes(data[:50])
    path = download_cifar10(cache, url=base + "/c.tar.gz", md5=None, progress=False)
    assert hits == ["/c.tar.gz"] and (cache / "c.tar.gz").read_bytes() == data
    assert load_cifar10(path, train=False)[0].shape == (9, 3, 32, 32)


@pytest.mark.parametrize("left", [[], ["data_batch_1"], ["data_batch_1", "test_batch"]])
def test_download_recovers_from_a_partial_folder(tmp_path, server, left):
    base, files, hits = server
    data, md5, batches = _archive(tmp_path)
    files["/c.tar.gz"] = data
    cache = tmp_path / "cache"
    partial = cache / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    for name in left:
        (partial / name).write_bytes(b"half")
    path = download_cifar10(cache, url=base + "/c.tar.gz", md5=md5, progress=False)
    x, y = load_cifar10(path, train=True)
    assert x.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(load_cifar10(path, train=False)[1], batches["test_batch"][b"labels"])
    assert _nothing_cached(cache) == ["c.tar.gz", "cifar-10-batches-py"]
