"""The documentation site and the HTML run report, loaded in headless Chromium.

Every page of the built site (`mkdocs build`) and the report of a small run are served over
HTTP and loaded by Chromium; a page fails on any message in the browser console (an
uncaught script error, a console.error) and on an image that does not load. Runs where a
Chromium binary is on PATH (Debian: `apt-get install chromium-headless-shell` or `chromium`),
skips with the reason elsewhere.

    python -m pytest -q tests/test_docs_browser.py
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
BROWSER = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason=f"no Chromium on PATH (looked for {', '.join(BROWSERS)}): the pages were not loaded"
)


def _serve(folder: str):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def load(url: str, screenshot: str | None = None) -> tuple[str, list[str]]:
    """(the page's DOM after its scripts ran, the console messages) of `url` in headless Chromium."""
    argv = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--window-size=1280,1000"]
    argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=120)
    console = re.findall(r":CONSOLE[^\]]*\] (.*)$", proc.stderr, re.M)
    return proc.stdout, console


def broken_images(url: str, dom: str) -> list[str]:
    """The <img> sources of `dom` that do not load as an image."""
    from PIL import Image

    broken = []
    for src in re.findall(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", dom):
        target = urllib.parse.urljoin(url, src.replace("&amp;", "&"))
        if target.startswith("data:"):
            continue
        try:
            with urllib.request.urlopen(target, timeout=30) as response:
                body = response.read()
            if not target.endswith(".svg"):
                Image.open(io.BytesIO(body)).verify()
        except Exception as err:  # noqa: BLE001 - any failure is a broken image
            broken.append(f"{src}: {err}")
    return broken


def _mkdocs() -> list[str]:
    if importlib.util.find_spec("mkdocs"):
        return [sys.executable, "-m", "mkdocs"]
    if shutil.which("mkdocs"):
        return [shutil.which("mkdocs")]
    pytest.skip("mkdocs is not installed (the docs extra: pip install '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("site"))
    proc = subprocess.run([*_mkdocs(), "build", "--strict", "--quiet", "--site-dir", folder],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    server = _serve(folder)
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _pages(folder: str) -> list[str]:
    pages = []
    for parent, _, files in os.walk(folder):
        for name in files:
            if name == "index.html":
                pages.append(os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/"))
    return sorted(pages)


def test_every_site_page_loads_without_console_messages_or_broken_images(site):
    folder, base = site
    pages = _pages(folder)
    assert len(pages) > 30 and "api/losses/index.html" in pages
    failures = []
    for page in pages:
        url = base + page
        dom, console = load(url)
        if "</html>" not in dom:
            failures.append(f"{page}: did not load")
        failures += [f"{page}: console: {message}" for message in console]
        failures += [f"{page}: image: {image}" for image in broken_images(url, dom)]
    assert not failures, "\n".join(failures)


def test_the_home_page_shows_the_retrieval_figure(site):
    folder, base = site
    dom, _ = load(base + "index.html")
    assert re.search(r"<img\b[^>]*src=\"images/retrieval\.png\"", dom)


def test_the_run_report_loads_without_console_messages_or_broken_images(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    train = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "digits", "--epochs", "2", "--k-final", "2",
             "--recluster-every", "1", "--steps-per-epoch", "5", "--run-dir", "run", "--no-export"]
    for argv in (train, [sys.executable, "-m", "tfdnc.report", "run"]):
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    server = _serve(str(tmp_path / "run" / "report"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        dom, console = load(url)
        images = re.findall(r"<img\b", dom)
        assert len(images) >= 4, dom[:2000]
        assert not console, console
        assert not broken_images(url, dom)
    finally:
        server.shutdown()
