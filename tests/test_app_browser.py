"""The web app in a real browser: `python -m swifti2v_jax.app` on a free localhost port with the
demo models, driven through Debian's chromium by Playwright.

Needs the `app` extra (gradio, playwright) and a `chromium` on PATH (.ci/run installs both).
Without them this module is skipped with one line saying what is missing; in CI (CI=true) it
fails instead. Screenshots go to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swifti2v_jax.io.video import read_video
from tests.browser_check import missing_for_browser_test

START_TIMEOUT = 300  # seconds: hang guards, not performance checks
RUN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module", autouse=True)
def _browser_available():
    """Skips this module without gradio, playwright or chromium; in CI (CI=true) fails it."""
    missing = missing_for_browser_test()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"browser test: {missing}", pytrace=False)
    if missing:
        pytest.skip(f"browser test: {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(URL, output directory, process) of the app; stopped (SIGTERM) at the end unless the
    last test stopped it."""
    workspace = tmp_path_factory.mktemp("app")
    output_dir = workspace / "videos"
    port = _free_port()
    log = (workspace / "app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "swifti2v_jax.app", "--port", str(port), "--output_dir",
         str(output_dir)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, (workspace / "app.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except OSError:
            assert time.monotonic() < deadline, "the app did not start serving"
            time.sleep(0.5)
    yield url, output_dir, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        yield browser
        browser.close()


def _open(browser, url: str):
    """The app in a new browser context (a session of its own)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    # Every wait is a hang guard (Playwright's 30 s default fails on loaded cores).
    page.set_default_timeout(RUN_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


@pytest.fixture(scope="module")
def page(app, browser):
    return _open(browser, app[0])


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _wait_status(page, text: str) -> str:
    """Waits until this run (since `_click`) shows a status starting with `text`. gradio's queue
    and timer overlay show the previous status under its own text until the run's first
    update ("Checking the inputs...")."""
    page.wait_for_function(
        """text => {
            const start = window.statuses.findIndex(s => s.startsWith('Checking the inputs'));
            return start >= 0 && window.statuses.slice(start).some(s => s.startsWith(text));
        }""",
        arg=text, timeout=RUN_TIMEOUT_MS,
    )  # fmt: skip
    return _status(page)


def _click(page, button: str) -> None:
    """Clicks #button, recording the page's changes from then on."""
    _record_changes(page)
    page.click(f"#{button}")


def _record_changes(page) -> None:
    """From now on, every distinct status text and preview image the page shows."""
    page.evaluate(
        """() => {
        window.statuses = []; window.times = []; window.previews = [];
        const record = () => {
            const status = document.querySelector('#status').innerText;
            if (window.statuses.at(-1) !== status) {
                window.statuses.push(status);
                window.times.push(Date.now());
            }
            const img = document.querySelector('#preview img');
            if (img && img.src && window.previews.at(-1) !== img.src) window.previews.push(img.src);
        };
        new MutationObserver(record).observe(document.body, {
            subtree: true, childList: true, attributes: true, characterData: true});
    }"""
    )


def _upload(page, path: Path) -> None:
    clear = page.locator("#image button[aria-label='Clear']")
    if clear.count():  # a file from an earlier test
        clear.first.click()
    page.locator("#image input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "name => document.querySelector('#image').innerText.includes(name)",
        arg=path.name,
    )


def _set_frames(page, frames: int) -> None:
    page.locator("#frames input").fill(str(frames))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_text_file_upload_shows_the_error(page, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image\n")
    _upload(page, bad)
    _click(page, "generate")
    status = _wait_status(page, "Error")
    page.screenshot(path=str(tmp_path / "error.png"))
    assert "cannot read image notes.txt" in status
    assert "Traceback" not in page.content()


def test_generate_streams_then_gives_the_video_and_a_second_run_compiles_nothing(
    page, app, tmp_path
):
    _, output_dir, _ = app
    image = tmp_path / "input.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), np.uint8)).save(image)
    _upload(page, image)
    page.locator("textarea").first.fill("a boat drifts on a lake")
    _set_frames(page, 17)
    _click(page, "generate")
    _wait_status(page, "Done in")
    page.screenshot(path=str(tmp_path / "done.png"), full_page=True)

    statuses = page.evaluate("window.statuses")
    progress = [s for s in statuses if s.startswith(("Stage I:", "Stage II:"))]
    assert len(set(progress)) >= 2 and any("segment 15 of 15" in s for s in progress), statuses
    assert any("s left" in s for s in progress)
    assert len(page.evaluate("window.previews")) >= 2  # the preview grew during the run

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "downloaded.mp4"
    download.value.save_as(saved)
    frames, fps = read_video(saved)
    assert frames.shape == (17, 64, 128, 3) and fps == 16
    assert page.locator("#video video").count() == 1
    assert "XLA compilations this run:" in page.locator("#summary").inner_text()

    # The same settings again: the warm models and programs are reused, nothing compiles.
    _click(page, "generate")
    _wait_status(page, "Done in")
    assert "XLA compilations this run: 0 " in page.locator("#summary").inner_text()
    assert len([n for n in _files(output_dir) if n.endswith(".mp4")]) == 2


def test_cancel_mid_stage2_leaves_no_file_then_generate_works(page, app, tmp_path):
    _, output_dir, _ = app
    before = _files(output_dir)
    _set_frames(page, 33)
    _click(page, "generate")
    _wait_status(page, "Stage II: segment 2 of")
    page.click("#cancel")
    status = _wait_status(page, "Cancelled after")
    page.screenshot(path=str(tmp_path / "cancelled.png"))
    assert "no video written" in status
    assert _files(output_dir) == before  # no mp4 and no temporary file

    _set_frames(page, 17)
    _click(page, "generate")
    _wait_status(page, "Done in")
    after = _files(output_dir)
    assert len(after) == len(before) + 1 and all(n.endswith(".mp4") for n in after)


def _first_time(page, prefix: str) -> float:
    """When this page first showed a status starting with `prefix` (ms since the epoch)."""
    return page.evaluate(
        "prefix => window.times[window.statuses.findIndex(s => s.startsWith(prefix))]", prefix
    )


def _wait_queued(page) -> None:
    """Until gradio's overlay shows this page's place in the queue ('queue: 2/2')."""
    page.wait_for_function(
        "() => window.statuses.some(s => /queue: \\d+\\/\\d+/.test(s))", timeout=RUN_TIMEOUT_MS
    )


def test_pages_wait_in_the_queue_with_their_place_shown(page, app, browser):
    other = _open(browser, app[0])
    _set_frames(page, 33)
    _set_frames(other, 33)
    _click(page, "generate")
    _wait_status(page, "Stage II: segment 1 of")
    _click(other, "generate")
    _wait_queued(other)
    _wait_status(page, "Done in")
    first_done = _first_time(page, "Done in")
    _wait_status(other, "Stage II: segment 1 of")
    # One run at a time: the second page's run started after the first one ended.
    assert _first_time(other, "Checking the inputs") >= first_done

    # A request waiting in the queue is dropped by Cancel; the running one goes on.
    _click(page, "generate")
    _wait_queued(page)
    page.click("#cancel")
    _wait_status(other, "Done in")
    page.wait_for_function(
        "() => window.statuses.includes('Cancelled before it started.')", timeout=RUN_TIMEOUT_MS
    )
    assert "Cancelling the queued run." in page.evaluate("window.statuses")
    other.context.close()


def test_sigterm_mid_run_deletes_the_unfinished_file_and_exits_143(page, app):
    _, output_dir, proc = app  # the last test: it stops the app
    before = _files(output_dir)
    _set_frames(page, 33)
    _click(page, "generate")
    _wait_status(page, "Stage II: segment 2 of")
    assert any(n.endswith(".partial.mp4") for n in _files(output_dir))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=START_TIMEOUT) == 128 + signal.SIGTERM
    assert _files(output_dir) == before
