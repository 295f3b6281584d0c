"""A real browser: JupyterLab in headless Chromium on the finished smoke study, a notebook run
with Run All from the menu, and the report read at 1024 px.

Chromium and its driver are Debian's (`apt-get install chromium chromium-driver`, which .ci/run
does); selenium (the test extra) drives them; no browser is downloaded. Without them the tests
are skipped, saying so."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill as pm
import pytest

from conftest import file_hashes
from smoke_study import REPO, smoke_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
           ".ci/run installs them)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

NOTEBOOK = "confusion_matrices"
TOKEN = "lucir-test"


@pytest.fixture(scope="session")
def study(tmp_path_factory, cache_dir):
    s = smoke_study(tmp_path_factory, cache_dir)
    assert s["proc"].returncode == 0, s["proc"].stderr[-3000:]
    return s


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(study, tmp_path_factory):
    """JupyterLab serving a folder with the notebook as a user prepares it for this study
    (papermill --prepare-only: the study's parameters injected, progress bars on), with its own
    settings: autosave is off, so that the file on disk shows what Run All itself writes."""
    root = tmp_path_factory.mktemp("lab")
    params = json.loads((study["results"] / "study" / "done" / f"{NOTEBOOK}__synthetic.json").read_text())["parameters"]
    params["config_overrides"] = params["config_overrides"] | {"progress": True}
    (root / "notebooks").mkdir()
    pm.execute_notebook(str(REPO / "notebooks" / f"{NOTEBOOK}.ipynb"), str(root / "notebooks" / f"{NOTEBOOK}.ipynb"),
                        parameters=params, prepare_only=True, kernel_name="python3", progress_bar=False)
    settings = root / "settings"
    (settings / "@jupyterlab" / "docmanager-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings").write_text(
        json.dumps({"autosave": False}))
    port = _free_port()
    log = open(root / "lab.log", "w")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}",
                             "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root / 'notebooks'}",
                             f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={root / 'ws'}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"JupyterLab exited: {(root / 'lab.log').read_text()[-2000:]}"
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5)
                break
            except OSError:
                assert time.time() < deadline, f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}"
                time.sleep(1)
        yield {"url": url, "notebook": root / "notebooks" / f"{NOTEBOOK}.ipynb", "log": root / "lab.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _screenshot(driver, name: str) -> None:
    """Keep what the browser showed, to look at, when LUCIR_SCREENSHOTS names a folder."""
    folder = os.environ.get("LUCIR_SCREENSHOTS")
    if folder:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(driver.get_window_size()["width"], max(900, min(height, 12000)))
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def _wait(driver, script: str, timeout: float, what: str, explain: str | None = None):
    """Poll a JavaScript expression until it is truthy; its value. On a timeout, the value of the
    expression `explain` (what the page shows) goes into the message."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.5)
    shown = f"; the page shows: {driver.execute_script(f'return {explain}')}" if explain else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{shown}")


KERNEL_IDLE = "document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status') === 'idle'"
TAB_DIRTY = "[...document.querySelectorAll('.lm-TabBar-tab.jp-mod-current')].some(t => t.classList.contains('jp-mod-dirty'))"


def test_run_all_in_jupyterlab_on_the_finished_smoke_study(study, lab, browser):
    sha = hashlib.sha256(lab["notebook"].read_bytes()).hexdigest()
    results = file_hashes(study["results"])
    browser.get(f"{lab['url']}/lab/tree/{NOTEBOOK}.ipynb?token={TOKEN}")
    _wait(browser, KERNEL_IDLE, 180, "the python3 kernel to start")
    time.sleep(3)  # JupyterLab writes the kernel's metadata into the notebook once its info arrives
    assert not browser.execute_script(f"return {TAB_DIRTY}"), \
        "the notebook is marked modified on opening (its metadata differs from the kernel's)"

    browser.find_element("xpath", "//li[contains(@class, 'lm-MenuBar-item')][normalize-space()='Run']").click()
    browser.find_element("css selector", "li.lm-Menu-item[data-command='runmenu:run-all']").click()
    prompts = "[...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim())"
    # Run All stops at a cell that raises: then the error is reported below, not as a timeout
    stderr = "document.querySelector('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]')"
    numbered = f"{prompts}.length > 0 && {prompts}.every(t => /^\\[\\d+\\]:$/.test(t))"
    status = "document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status')"
    _wait(browser, f"({numbered} || {stderr}) && {KERNEL_IDLE}", 300, "Run All to finish",
          explain=f"JSON.stringify({{prompts: {prompts}, kernel: {status}, stderr: {stderr}?.innerText.slice(0, 500)}})")

    outputs = browser.execute_script(
        "return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => [o.getAttribute('data-mime-type'),"
        " o.innerText.slice(0, 300)])")
    errors = [text for mime, text in outputs if mime == "application/vnd.jupyter.stderr"]
    assert not errors, f"error or warning output: {errors}"
    assert browser.execute_script("return document.querySelectorAll('.jp-OutputArea-output .widget-hprogress').length"
                                  ) >= 1, "the progress bar is not a rendered widget"
    assert not [t for _, t in outputs if re.search(r"HBox\(|FloatProgress\(|runs: .*\|", t)], "text fallback of the bar"
    images = browser.execute_script(
        "return [...document.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.complete)"
        ".map(i => [i.naturalWidth, i.getBoundingClientRect().width, i.src.slice(0, 15)])")
    assert len(images) == 1 and images[0][2] == "data:image/png;", f"one figure: {images}"
    assert 0 < images[0][0] <= images[0][1] + 1, f"the figure is shrunk to fit the notebook: {images[0]}"
    assert browser.execute_script(f"return {TAB_DIRTY}"), "Run All left no outputs in the open notebook"
    _screenshot(browser, f"jupyterlab_{NOTEBOOK}")

    assert hashlib.sha256(lab["notebook"].read_bytes()).hexdigest() == sha, "the notebook file was modified"
    assert file_hashes(study["results"]) == results, "Run All changed files under results/"


def test_report_reads_at_1024_px_without_scrolling_or_shrinking(study, browser):
    browser.set_window_size(1024, 900)
    browser.get((study["reports"] / "report.html").as_uri())
    _wait(browser, "document.readyState === 'complete'", 60, "the report to load")
    tables = browser.execute_script(
        "return [...document.querySelectorAll('table')].map(t => { const box = t.closest('.jp-OutputArea-output')"
        " || t.parentElement; return [t.rows[0].innerText.slice(0, 80), box.scrollWidth, box.clientWidth]; })")
    assert tables and not [t for t in tables if t[1] > t[2] + 1], f"tables that scroll: {tables}"
    page = browser.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert page[0] <= page[1], "the page scrolls sideways"
    _screenshot(browser, "report_1024px")
    images = browser.execute_script(
        "return [...document.querySelectorAll('img')].map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
    assert images and not [i for i in images if i[0] > i[1] + 1], f"figures shrunk to fit: {images}"
