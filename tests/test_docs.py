"""The documentation site: every public name has an API page, and the built pages render
in a real browser (Debian's headless chromium driven through chromedriver).

The site is built by ``make docs`` (warnings are errors); ``.ci/run`` runs that before the
test suite, so here the build is incremental and normally a no-op. Without a previous build
this test builds the site itself (a couple of minutes on two cores).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import repsim

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HTML = DOCS / "_build" / "html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _apigen():
    spec = importlib.util.spec_from_file_location("repsim_docs_apigen", DOCS / "apigen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- API index


def test_api_index_lists_every_public_name_once():
    apigen = _apigen()
    exports = apigen.public_modules()
    listed = [name for _, _, names in apigen.grouped_names(exports) for name in names]
    assert sorted(listed) == sorted(repsim.__all__)
    text = apigen.render(exports)
    for name in repsim.__all__:
        assert f"\n   {name}\n" in text, f"{name} has no entry in the API index"


def test_api_groups_place_names_by_task():
    apigen = _apigen()
    groups = {title: names for title, _, names in apigen.grouped_names(
        {"cka": "cka", "MinibatchCKA": "streaming", "pwcca": "cca",
         "compare_models": "adapters.torch", "something_new": "brand_new_module"})}
    assert groups["Measures"] == ["cka"]
    assert groups["Streaming"] == ["MinibatchCKA"]
    assert groups["CCA family"] == ["pwcca"]
    assert groups["Model adapter"] == ["compare_models"]
    assert groups["Other"] == ["something_new"]  # never dropped



def test_every_real_public_name_has_a_task_group():
    """Names defined in submodules of submodules (``blocks.declared``, ``adapters.*``,
    ``stats.*``, the private ``_centring``) land in their task's group, none in "Other"."""
    apigen = _apigen()
    exports = apigen.public_modules()
    groups = {title: names for title, _, names in apigen.grouped_names(exports)}
    assert "Other" not in groups
    where = {name: title for title, names in groups.items() for name in names}
    assert where["find_block"] == where["segment_layers"] == "Principal components and blocks"
    for name in ("layer_statistics", "hidden_state_layers", "word_aligned_batches",
                 "standardize_features", "block_layers", "compare_models"):
        assert where[name] == "Model adapter", name
    assert where["centre_gram"] == where["ucentre_gram"] == "Measures"
    assert where["bootstrap"] == where["Interval"] == "Statistics"
    text = apigen.render(exports)
    assert "\n   results.atomic_write\n" in text  # the public atomic write has a page


# --------------------------------------------------------------------------- the build


@pytest.fixture(scope="session")
def site():
    """The built site, brought up to date by an incremental ``make docs`` build."""
    HTML.parent.mkdir(parents=True, exist_ok=True)
    with open(HTML.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test runs may share one tree
        env = dict(os.environ, MPLBACKEND="Agg")
        proc = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
             str(DOCS), str(HTML)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert proc.returncode == 0, f"docs build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return HTML


def test_every_public_name_has_an_api_page(site):
    index = (site / "api" / "index.html").read_text()
    for name in repsim.__all__:
        page = site / "api" / "generated" / f"repsim.{name}.html"
        assert page.exists(), f"no API page for repsim.{name}"
        assert f'href="generated/repsim.{name}.html"' in index, f"repsim.{name} not in the index"


def test_gallery_examples_all_ran(site):
    examples = sorted(p.stem for p in (ROOT / "examples" / "gallery").glob("plot_*.py"))
    assert len(examples) >= 4
    for stem in examples:
        page = site / "auto_examples" / f"{stem}.html"
        assert page.exists(), f"gallery page for {stem} missing"
        text = page.read_text()
        assert "sphx-glr-single-img" in text or "sphx-glr-multi-img" in text, \
            f"{stem}: no figure on its gallery page"


# --------------------------------------------------------------------------- the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_chromium() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    # the same step .ci/run runs; here only when someone runs the suite without it
    proc = subprocess.run(["make", "docs-deps"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium/chromedriver cannot be installed here (`make docs-deps`: "
                    f"{(proc.stdout + proc.stderr)[-500:]!r})")


def _request(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "null")


@pytest.fixture(scope="module")
def browser(site):
    """``open(path) -> run(js)``: pages of the built site in headless chromium."""
    _ensure_chromium()

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    port = _free_port()
    profile = tempfile.mkdtemp(prefix="repsim-docs-chromium-")
    driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = f"http://127.0.0.1:{port}"
    session = None
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                if _request("GET", f"{wd}/status", timeout=2)["value"]["ready"]:
                    break
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": str(CHROMIUM), "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={profile}"]},
        }}}
        session = _request("POST", f"{wd}/session", caps, timeout=120)["value"]["sessionId"]
        sess = f"{wd}/session/{session}"

        def open_page(path):
            _request("POST", f"{sess}/url", {"url": f"{base}/{path}"})

            def run(script):
                return _request("POST", f"{sess}/execute/sync",
                                {"script": script, "args": []})["value"]
            return run

        yield open_page
    finally:
        if session is not None:
            with contextlib.suppress(OSError):
                _request("DELETE", f"{wd}/session/{session}", timeout=30)
        driver.terminate()
        driver.wait(timeout=30)
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def test_cka_api_page_renders_its_signature(browser):
    run = browser("api/generated/repsim.cka.html")
    info = run("""
        const dt = document.getElementById('repsim.cka');
        return {title: document.title,
                sig: dt ? dt.innerText : null,
                params: [...document.querySelectorAll('dl.field-list dt')].map(e => e.innerText),
                visible: dt ? dt.getBoundingClientRect().height > 0 : false};
    """)
    assert info["sig"] is not None, "no signature element with id repsim.cka"
    assert info["visible"]
    sig = " ".join(info["sig"].split())
    for part in ("repsim.cka(", "x", "y", "kernel='linear'", "estimator='biased'"):
        assert part in sig, f"{part!r} missing from the rendered signature {sig!r}"
    assert "cka" in info["title"]
    params = " ".join(info["params"])
    assert "Parameters" in params and "Returns" in params


def test_gallery_page_renders_its_figure(browser):
    run = browser("auto_examples/plot_cka_basics.html")
    images = run("""
        return [...document.querySelectorAll('img.sphx-glr-single-img, img.sphx-glr-multi-img')]
            .map(img => ({src: img.getAttribute('src'), complete: img.complete,
                          width: img.naturalWidth, height: img.naturalHeight,
                          shown: img.getBoundingClientRect().width}));
    """)
    assert images, "the gallery page shows no figure"
    for img in images:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
        assert img["shown"] > 0, img
    text = run("return document.querySelector('pre') ? document.body.innerText : ''")
    assert "linear CKA" in text  # the example's printed output is on the page


# --------------------------------------------------------------------------- guide pages


@pytest.mark.parametrize("page", ["user_guide/getting_started", "user_guide/choosing",
                                  "user_guide/store",
                                  "user_guide/hooks", "user_guide/faq", "guide/uncertainty"])
def test_user_guide_examples_print_what_the_page_says(page):
    """The ``>>>`` examples of these pages are doctests: their numbers stay true."""
    import doctest

    pytest.importorskip("torch")
    failures, tried = doctest.testfile(
        str(DOCS / f"{page}.rst"), module_relative=False,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    assert tried > 0
    assert failures == 0, f"{failures} of {tried} examples in {page}.rst failed (see above)"


GUIDE_PAGES = ["getting_started", "choosing", "hooks", "distributed", "performance", "study",
               "training",
               "faq"]


def test_user_guide_pages_exist(site):
    for page in GUIDE_PAGES:
        assert (site / "user_guide" / f"{page}.html").exists(), f"user guide page {page} missing"
    assert (site / "guide" / "uncertainty.html").exists()


def test_study_page_shows_the_committed_run(browser):
    assert (DOCS / "study" / "digits" / "summary.json").exists(), "the default study run is committed"
    run = browser("user_guide/study.html")
    info = run("""
        return {images: [...document.querySelectorAll('article img')].map(
                    img => ({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0})),
                tables: document.querySelectorAll('article table').length,
                text: document.querySelector('article').innerText};
    """)
    assert len(info["images"]) >= 4, info["images"]
    assert all(img["ok"] for img in info["images"]), info["images"]
    assert info["tables"] >= 2  # the commands and the run's models
    assert "summary.json" in info["text"]

