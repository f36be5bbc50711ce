"""The web app in a real headless Chromium: upload, preview, progress, video, errors, cancel, queue.

Needs the ``ui`` extra, the ``playwright`` package and a Chromium binary (no browser download: Debian's
``chromium`` package, see ``CHROMIUM``); skipped with the reason otherwise. The server runs in this
process on a free loopback port and is closed at the end (a watchdog closes it after ``SERVER_LIFETIME_S``
whatever happens). The page may not fetch anything from outside 127.0.0.1: every such request is
aborted and fails the test, so the app works offline.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from bindweave.generate import ModelConfig
from bindweave.ui.loader import PipelineLoader

gr = pytest.importorskip("gradio", reason="the web app needs the 'ui' extra: pip install 'bindweave[ui]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need the playwright package: pip install playwright"
)
from bindweave.ui.app import build_app  # noqa: E402 - needs gradio
from bindweave.ui.launch import launch_app  # noqa: E402

CHROMIUM = Path(os.environ.get("BINDWEAVE_CHROMIUM", "/usr/bin/chromium"))
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set BINDWEAVE_CHROMIUM)",
    ),
    # Gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]
SERVER_LIFETIME_S = 240
TIMEOUT_MS = 60_000

# Records every distinct text of the progress overlay on the result video, as the page shows it.
RECORD_PROGRESS = """
window.progressSeen = [];
const record = () => document
  .querySelectorAll('#result-video .progress-text, #result-video .meta-text, #result-video .meta-text-center')
  .forEach(e => {
    const text = e.textContent.trim();
    if (text && !window.progressSeen.includes(text)) window.progressSeen.push(text);
  });
new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
"""
VIDEO_READY = """() => {
  const v = document.querySelector('#result-video video');
  return v !== null && v.readyState >= 2 && v.duration > 0;
}"""


class ConcurrencyProbe:
    """A pipeline loader whose pipelines count how many runs are in flight at once."""

    def __init__(self, loader: PipelineLoader) -> None:
        self.loader, self.config = loader, loader.config
        self.active = self.max_active = self.runs = 0
        self._lock = threading.Lock()

    def __call__(self, memory: str | None = None) -> Any:
        return _CountingPipe(self.loader(memory), self)

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.runs += 1
            self.max_active = max(self.max_active, self.active)

    def exit(self) -> None:
        with self._lock:
            self.active -= 1


class _CountingPipe:
    def __init__(self, pipe: Any, probe: ConcurrencyProbe) -> None:
        self._pipe, self._probe = pipe, probe

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._probe.enter()
        try:
            return self._pipe(*args, **kwargs)
        finally:
            self._probe.exit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def probe(pipe_loader: PipelineLoader) -> ConcurrencyProbe:
    return ConcurrencyProbe(pipe_loader)


@contextlib.contextmanager
def serving(loader: Any, out: Path) -> Iterator[str]:
    """The app of ``loader`` served on a free loopback port; closed at the end or by the watchdog."""
    app = build_app(loader, out)
    _, url = launch_app(app, "127.0.0.1", free_port(), out, block=False)
    watchdog = threading.Timer(SERVER_LIFETIME_S, app.close)
    watchdog.daemon = True
    watchdog.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        watchdog.cancel()
        app.close()


@pytest.fixture(scope="module")
def server(probe: ConcurrencyProbe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(probe, tmp_path_factory.mktemp("ui-results")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def open_page(browser: Any, url: str) -> Iterator[Any]:
    """A fresh browser session on the app; fails the test if the page reaches outside 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    outside: list[str] = []

    def only_loopback(route: Any) -> None:
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#refs")
    yield page
    context.close()
    assert outside == [], f"the page tried to reach outside the machine: {outside}"


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    with open_page(browser, server) as page:
        yield page


@pytest.fixture(scope="module")
def five_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("five")
    paths = [folder / f"ref{i}.png" for i in range(5)]
    for i, path in enumerate(paths):
        PIL.Image.new("RGB", (24, 24), (40 * i, 200 - 30 * i, 90)).save(path)
    return paths


def upload(page: Any, paths: list[Path]) -> None:
    page.locator("#refs input[type=file]").set_input_files([str(p) for p in paths])


def set_number(page: Any, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")  # commit the value (change event)


def small_job(page: Any, refs: list[Path], steps: int) -> None:
    """Upload, choose the smallest size and a step count, and write a prompt."""
    upload(page, refs)
    page.wait_for_function(f"document.querySelectorAll('#preview img').length === {2 * len(refs)}")
    for elem_id, value in (("height", 32), ("width", 48), ("frames", 5), ("steps", steps)):
        set_number(page, elem_id, value)
    page.locator("#prompt textarea").fill("the noisy block drifts left while the red one rises")
    # The preview follows the size: its canvases are now 48x32.
    page.wait_for_function(
        "[...document.querySelectorAll('#preview img')].every(i => i.naturalWidth === 48 && i.naturalHeight === 32)"
    )


def status_text(page: Any) -> str:
    return page.locator("#status").inner_text()


def test_generate_in_the_browser(page, ref_paths, tmp_path):
    small_job(page, ref_paths, steps=30)
    assert page.locator("#preset input:checked").get_attribute("value") == "custom"
    page.evaluate(RECORD_PROGRESS)
    page.locator("#generate").click()

    video = page.locator("#result-video video")
    video.wait_for()
    page.wait_for_function(VIDEO_READY)
    width, height, duration = page.evaluate(
        "() => { const v = document.querySelector('#result-video video');"
        " return [v.videoWidth, v.videoHeight, v.duration]; }"
    )
    assert (width, height) == (48, 32) and duration == pytest.approx(5 / 16, abs=0.05)
    response = page.request.get(video.get_attribute("src"))
    assert response.status == 200 and response.body()[4:8] == b"ftyp"

    # The progress overlay followed the denoising steps.
    seen = page.evaluate("window.progressSeen")
    steps = [int(m.group(1)) for text in seen if (m := re.match(r"(\d+)/30 steps", text))]
    assert len(set(steps)) >= 3 and steps == sorted(steps) and max(steps) > 1, seen

    page.wait_for_function("document.querySelector('#status').innerText.includes('Done in')")
    assert "seed" in status_text(page)
    command = page.locator("#command").inner_text()
    assert "bindweave generate" in command and "--steps 30" in command and "--height 32" in command
    assert '"num_frames": 5' in page.locator("#settings-json").inner_text()
    links = page.locator("#downloads a[download]")
    assert [links.nth(i).get_attribute("download") for i in range(links.count())] == [
        "video.mp4",
        "strip.png",
        "settings.json",
    ]
    for i in range(links.count()):
        assert page.request.get(links.nth(i).get_attribute("href")).status == 200
    assert page.locator("#history img").count() == 1
    shot = tmp_path / "bindweave-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    with PIL.Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] == 1400 and pixels.std() > 10  # a rendered page, not a blank one
    print(f"screenshot: {shot}")
    page.locator("#history .thumbnail-item").first.click()  # showing a past result again
    page.wait_for_function(
        "document.querySelector('#status').innerText.includes('Showing an earlier result')"
    )
    assert "--steps 30" in page.locator("#command").inner_text()


def test_bad_inputs_show_a_message_and_the_server_keeps_going(
    page, server, ref_paths, not_an_image, five_images
):
    upload(page, [ref_paths[0], not_an_image])
    page.wait_for_function("document.querySelector('#status').innerText.includes('not an image')")
    assert "Reference 2 (notes.txt) is not an image that can be read" in status_text(page)
    page.locator("#generate").click()  # generating anyway: an error toast, not a crash
    toast = page.locator(".toast-body", has_text="Reference 2 (notes.txt) is not an image")
    toast.first.wait_for()

    page.reload()
    page.wait_for_selector("#refs")
    upload(page, five_images)
    page.wait_for_function("document.querySelector('#status').innerText.includes('at most 4')")
    assert "5 are uploaded. Remove 1." in status_text(page)
    page.locator("#refs button[aria-label='Remove this file']").last.click()  # as asked
    page.wait_for_function("document.querySelectorAll('#preview img').length === 8")
    assert status_text(page).strip() == ""

    page.reload()
    page.wait_for_selector("#refs")
    upload(page, ref_paths)
    page.wait_for_function("document.querySelectorAll('#preview img').length === 4")
    set_number(page, "height", 50)
    page.wait_for_function("document.querySelector('#status').innerText.includes('multiple of 16')")
    assert "Height must be a positive multiple of 16 (got 50; try 48 or 64)." in status_text(page)
    set_number(page, "height", 32)
    set_number(page, "frames", 10)
    page.locator("#generate").click()
    page.locator(".toast-body", has_text="Frames must be 4k + 1").first.wait_for()
    assert page.locator("#result-video video").count() == 0
    assert page.request.get(server).status == 200  # still serving


def test_reordering_and_removing_references_update_the_preview(page, ref_paths):
    upload(page, ref_paths)
    page.wait_for_function("document.querySelectorAll('#preview img').length === 4")
    captions = page.locator("#preview .caption-label")
    assert "Reference 1 (tall subject.png)" in captions.nth(0).inner_text()
    rows = page.locator("#refs tr.file")
    rows.nth(1).drag_to(rows.nth(0))  # drag wide.jpg to the top
    page.wait_for_function(
        "document.querySelector('#preview .caption-label').innerText.startsWith('Reference 1 (wide.jpg)')"
    )
    assert captions.nth(2).inner_text().startswith("Reference 2 (tall subject.png)")
    page.locator("#refs button[aria-label='Remove this file']").first.click()
    page.wait_for_function("document.querySelectorAll('#preview img').length === 2")
    assert captions.nth(0).inner_text().startswith("Reference 1 (tall subject.png)")


def test_cancel_stops_a_running_job(page, ref_paths, probe):
    small_job(page, ref_paths[:1], steps=300)
    page.evaluate(RECORD_PROGRESS)
    page.locator("#generate").click()
    page.wait_for_function(
        "window.progressSeen.some(t => /^([3-9]|\\d\\d+)\\/300 steps/.test(t))", timeout=TIMEOUT_MS
    )
    started = time.monotonic()
    page.locator("#cancel").click()
    page.locator(".toast-body", has_text="Cancelling").first.wait_for()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Cancelled after step')")
    assert time.monotonic() - started < 15
    status = status_text(page)
    match = re.search(r"Cancelled after step (\d+) of 300; nothing was saved", status)
    assert match and 3 <= int(match.group(1)) < 300, status
    assert page.locator("#result-video video").count() == 0
    assert probe.active == 0


def test_two_sessions_never_run_the_model_at_once(browser, server, ref_paths, probe):
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport={"width": 1400, "height": 1800})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.wait_for_selector("#refs")
        small_job(page, ref_paths, steps=4)
        pages.append(page)
    runs_before = probe.runs
    for page in pages:
        page.locator("#generate").click()
    for page in pages:
        page.wait_for_function(VIDEO_READY)
        assert page.locator("#history img").count() == 1  # each session keeps its own gallery
        page.context.close()
    assert probe.runs - runs_before == 2
    assert probe.max_active == 1


def test_an_example_fills_the_references_and_the_prompt_for_the_embedded_model(browser, tmp_path):
    with serving(PipelineLoader(ModelConfig(device="cpu")), tmp_path) as url, open_page(browser, url) as page:
        # The examples render after #refs: counting them at once raced (seen failing once in CI).
        page.wait_for_selector("#examples tr.tr-body")
        assert page.locator("#examples tr.tr-body").count() == 4
        page.locator("#examples tr.tr-body").nth(2).click()  # the three-subject scene
        page.wait_for_function("document.querySelectorAll('#preview img').length === 6")  # canvas + mask each
        assert page.locator("#prompt textarea").input_value().startswith("On a teal background, the first")
        files = page.locator("#refs").inner_text()
        assert all(f"subject{k}" in files for k in (1, 2, 3)) and "subject4" not in files
        # Each reference is letterboxed at the native size, 64x64.
        page.wait_for_function(
            "[...document.querySelectorAll('#preview img')].every(i => i.naturalWidth === 64 && i.naturalHeight === 64)"
        )
