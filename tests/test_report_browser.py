"""The report opened in real headless Chromium: no console errors, leaderboard ranked and re-ranked, significance
coloured only where the stated correction says, demo banner, a phone-width layout without sideways scrolling, and
every model's prediction visible.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (file descriptors 3 and 4, JSON
messages ending in NUL): no websocket library, no port to find or race for, and the browser exits with us. We
listen to the three places a page error can surface: `Runtime.exceptionThrown` (uncaught exceptions, including a
broken JSON payload), `Runtime.consoleAPICalled` with type error/assert (console.error), and `Log.entryAdded` at
level error (failed resource loads, such as a thumbnail path that does not exist). Parsing `--enable-logging`
stderr was the alternative; its format changes between Chromium versions, the protocol's events do not.

Skips with a reason when Debian's `chromium` is not installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_report import (
    FAILED,
    ReportFolder,
    demo_results_folder,
    holm_significant,
    significance_fixture,
    synthetic_folder,
    x100,
)

from contract import SAMPLE_SCORES_JSONL, SampleScores, read_jsonl, results_file
from scoring.report import DEMO_SENTENCE, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

SCREENSHOT_DIR_ENV = "REPORT_SCREENSHOT_DIR"  # copy screenshots there too, to look at them after the run


class Chromium:
    """Headless Chromium driven over the DevTools pipe."""

    def __init__(self, user_data_dir: Path, width: int = 1400, height: int = 1000) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def give_child_the_pipe() -> None:
            # Move both ends above 10 first so dup2 onto 3/4 cannot clobber the other one.
            high_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        assert CHROMIUM is not None
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={user_data_dir}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            command,
            preexec_fn=give_child_the_pipe,
            close_fds=False,  # our other descriptors are non-inheritable (PEP 446); 3 and 4 are the pipe
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next_message(timeout=30)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._next_message(timeout=max(0.1, deadline - time.monotonic()))
            if event.get("method") == method:
                return event

    def _next_message(self, timeout: float) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("Chromium did not answer in time") from None
        if message is None:
            raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.process.poll()})")
        if "method" in message:
            self.events.append(message)
        return message

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        self._reader.join(timeout=5)
        os.close(self._from_browser)


class Page:
    def __init__(self, browser: Chromium, width: int = 1400, height: int = 1000) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(domain)
        self.set_viewport(width, height)

    def set_viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """`mobile` as a phone: the viewport meta tag applies and scrollbars overlay the page."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def open(self, path: Path) -> None:
        self.browser.events.clear()
        self.send("Page.navigate", {"url": path.resolve().as_uri()})
        self.browser.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:  # lazy thumbnails below the fold would be blank: load them all first
            self.evaluate(
                "Promise.all(Array.from(document.images).map((i) => { i.loading = 'eager'; "
                "return i.decode().catch(() => null); }))"
            )
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params |= {"captureBeyondViewport": True, "clip": clip}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        copy_dir = os.environ.get(SCREENSHOT_DIR_ENV)
        if copy_dir:
            Path(copy_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(copy_dir) / path.name)
        return path


@pytest.fixture
def page(tmp_path: Path):
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        yield Page(browser)
    finally:
        browser.close()


# Collects what the checks need in one evaluation; `checkVisibility` is false for display:none/hidden/zero-size.
STATE_JS = """
(() => {
  const visible = (e) => !!e && e.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})
    && e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().height > 0;
  const board = document.getElementById("leaderboard");
  const sample = document.querySelector("#samples .sample");
  if (sample) sample.scrollIntoView();
  return {
    ready: document.body.dataset.ready || null,
    jsErrors: document.getElementById("js-errors").textContent,
    boardVisible: visible(board),
    boardRows: Array.from(board.tBodies[0].rows).map((r) => [r.dataset.model, visible(r)]),
    firstSample: sample ? sample.dataset.sample : null,
    predictions: sample ? Array.from(sample.querySelectorAll(".pred")).map((p) =>
      [p.dataset.model, p.querySelector(".text").textContent, visible(p)]) : [],
    pageInfo: document.getElementById("page-info").textContent,
  };
})()
"""


def check_report_in_browser(page: Page, folder: ReportFolder, report: Path, screenshot: Path) -> dict[str, Any]:
    page.open(report)
    state = page.evaluate(STATE_JS)
    assert state["ready"] == "1", state
    assert page.errors() == [] and state["jsErrors"] == ""
    assert state["boardVisible"]
    assert [name for name, _ in state["boardRows"]] == folder.rows("cider")  # ranked by CIDEr, failed last
    assert all(shown for _, shown in state["boardRows"])

    # The first sample in file order shows every model that produced outputs, with the cleaned prediction.
    first = folder.sample_ids[0]
    assert state["firstSample"] == first
    expected = {}
    for model in folder.scored_models:
        scores = {
            s.sample_id: s for s in read_jsonl(results_file(folder.results, SAMPLE_SCORES_JSONL, model), SampleScores)
        }
        expected[model] = scores[first].prediction or "(empty)"
    shown = {model: text for model, text, is_visible in state["predictions"] if is_visible}
    assert {m: shown.get(m) for m in expected} == expected
    page.screenshot(screenshot.with_name(screenshot.stem + "-samples.png"))
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(screenshot)
    return state


def test_report_opens_without_errors_and_shows_every_model(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    report = build_report(folder.results, data_file=folder.data_file)
    check_report_in_browser(page, folder, report, tmp_path / "report-synthetic.png")
    assert (tmp_path / "report-synthetic.png").stat().st_size > 10_000


@pytest.mark.slow
def test_report_of_demo_results_in_browser(page: Page, tmp_path: Path, request) -> None:
    """The real pipeline: tiny models -> runner -> `python -m scoring score --report` (no --data given to the
    report: samples, references and images come from the data file the run manifests name)."""
    folder = demo_results_folder(tmp_path, request)
    state = check_report_in_browser(page, folder, folder.results / "report.html", tmp_path / "report-demo.png")
    # The first sample's thumbnail exists next to the page and decodes (images below the fold load lazily).
    width = page.evaluate(
        "(() => { const i = document.querySelector('#samples .sample img'); "
        "return i.decode().then(() => i.naturalWidth); })()"
    )
    assert 0 < width <= 256, state
    human = page.evaluate(
        "(() => { const r = document.querySelector('#leaderboard tfoot tr.human'); "
        "return r && r.checkVisibility() ? r.querySelector('td.model').textContent : null; })()"
    )
    assert human == "human (leave-one-out)"
    # Tiny random-weight checkpoints: the page says so first.
    banner = page.evaluate(
        "(() => { const b = document.getElementById('demo-banner'); window.scrollTo(0, 0);"
        " return b && b.checkVisibility() ? [b.querySelector('strong').textContent, b.getBoundingClientRect().top]"
        " : null; })()"
    )
    assert banner == [DEMO_SENTENCE, 0]


LEADERBOARD_JS = """(() => Array.from(document.querySelectorAll('#leaderboard tbody tr')).map((r) => ({
  model: r.dataset.model, rank: r.querySelector('td.rank').textContent,
  gap: r.querySelector('td.gap .v').textContent, shaded: r.querySelector('td.gap').classList.contains('sig-worse'),
  ranked: Array.from(r.cells).filter((c) => c.classList.contains('ranked')).length })))()"""


def choose(page: Page, select_id: str, value: str) -> None:
    page.evaluate(
        f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); s.value = {json.dumps(value)};"
        " s.dispatchEvent(new Event('change')); })()"
    )


def test_leaderboard_ranks_by_cider_and_reranks_by_the_chosen_metric(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    # METEOR in the reverse order of CIDEr (set by hand), so re-ranking has to move rows.
    for value, model in enumerate(folder.ranked("cider"), start=1):
        folder.patch_metrics(model, metrics=folder.metrics(model).metrics | {"meteor": value / 10})
    assert folder.ranked("meteor") == folder.ranked("cider")[::-1]
    page.open(build_report(folder.results, data_file=folder.data_file))

    def expected(metric: str) -> list[dict[str, Any]]:
        values = {m: folder.metrics(m).metrics[metric] for m in folder.scored_models}
        best = max(values.values())
        rows = [
            {"model": m, "rank": str(i), "gap": "best" if i == 1 else x100(values[m] - best, sign=True)}
            for i, m in enumerate(folder.ranked(metric), start=1)
        ]
        return rows + [{"model": FAILED, "rank": "—", "gap": "—"}]

    for metric in ("cider", "meteor", "bleu4", "cider"):
        if metric != "cider" or page.evaluate("document.getElementById('rank-metric').value") != "cider":
            choose(page, "rank-metric", metric)
        rows = page.evaluate(LEADERBOARD_JS)
        assert [{k: r[k] for k in ("model", "rank", "gap")} for r in rows] == expected(metric), metric
        # The ranking column is marked in every row with scores (the failed row says why across the columns).
        assert [r["ranked"] for r in rows] == [1] * len(folder.scored_models) + [0]
        label = page.evaluate("Array.from(document.querySelectorAll('.rank-label')).map((e) => e.textContent)")
        assert set(label) == {{"cider": "CIDEr", "meteor": "METEOR", "bleu4": "sacreBLEU BLEU-4"}[metric]}
    assert page.errors() == []


def test_significance_colouring_follows_the_stated_holm_correction(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    significance_fixture(folder)
    page.open(build_report(folder.results, data_file=folder.data_file))
    best, second, third = folder.ranked("cider")
    for metric in ("cider", "bleu4"):
        choose(page, "significance-metric", metric)
        shown = page.evaluate(
            """(() => Array.from(document.querySelectorAll('.sig-block')).filter((b) => b.checkVisibility())
                 .map((b) => [b.dataset.metric, b.querySelector('.hint').textContent,
                   Array.from(b.querySelectorAll('td.cell[data-model]')).map((c) => [c.closest('tr').dataset.model,
                     c.dataset.model, Array.from(c.classList).filter((k) => k.startsWith('sig-'))])]))()"""
        )
        assert len(shown) == 1 and shown[0][0] == metric
        _, hint, cells = shown[0]
        assert "Holm-Bonferroni" in " ".join(hint.split()) and "compared with 0.05/3" in " ".join(hint.split())
        significant = holm_significant(folder.p_values(metric))
        assert len(cells) == 6
        for a, b, classes in cells:
            value_a, value_b = (folder.metrics(m).metrics[metric] for m in (a, b))
            colour = ["sig-better" if value_a > value_b else "sig-worse"] if frozenset({a, b}) in significant else []
            assert classes == colour, (metric, a, b)
        # The leaderboard's gap to the best is shaded by the same rule.
        choose(page, "rank-metric", metric)
        shaded = {r["model"]: r["shaded"] for r in page.evaluate(LEADERBOARD_JS)}
        leader = folder.ranked(metric)[0]
        for model in folder.scored_models:
            assert shaded[model] == (frozenset({model, leader}) in significant), (metric, model)
    # p = 0.03 (< 0.05 uncorrected) between the best two by CIDEr: not coloured.
    assert holm_significant(folder.p_values("cider")) == {frozenset({best, third})}
    assert page.errors() == []


def test_demo_banner_only_for_random_weight_models(page: Page, tmp_path: Path, request) -> None:
    demo = synthetic_folder(tmp_path / "demo", request)
    demo.patch_metrics(demo.scored_models[0], random_weights=True)
    page.open(build_report(demo.results, data_file=demo.data_file))
    banner = page.evaluate(
        """(() => { const b = document.getElementById('demo-banner');
             return b && b.checkVisibility() ? {text: b.querySelector('strong').textContent,
               top: b.getBoundingClientRect().top, first: document.body.firstElementChild === b} : null; })()"""
    )
    assert banner == {"text": DEMO_SENTENCE, "top": 0, "first": True}
    page.screenshot(tmp_path / "report-demo-banner-1400.png")
    assert page.errors() == []
    real = synthetic_folder(tmp_path / "real", request)
    page.open(build_report(real.results, data_file=real.data_file))
    assert page.evaluate("document.getElementById('demo-banner')") is None
    assert DEMO_SENTENCE not in page.evaluate("document.body.innerText")


LAYOUT_JS = """(() => {
  window.scrollTo(0, 0);
  const doc = document.documentElement;
  const box = document.querySelector('#leaderboard-section .scroll');
  const grid = document.querySelector('.charts').getBoundingClientRect();
  const figures = Array.from(document.querySelectorAll('.charts figure')).map((f) => f.getBoundingClientRect())
    .map((r) => ({left: Math.round(r.left), right: Math.round(r.right), top: Math.round(r.top)}));
  // Anything reaching past the right edge that is not inside a box that scrolls on its own.
  const outside = Array.from(document.querySelectorAll('body *')).filter((e) => !e.closest('.scroll')
    && e.getBoundingClientRect().right > doc.clientWidth + 0.5).map((e) => e.tagName + '.' + e.className);
  return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, boxScrollWidth: box.scrollWidth,
    boxClientWidth: box.clientWidth, boxRight: box.getBoundingClientRect().right, figures, outside,
    grid: {left: Math.round(grid.left), right: Math.round(grid.right)}};
})()"""


def test_phone_width_has_no_sideways_scrolling_and_charts_fill_a_desktop(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    report = build_report(folder.results, data_file=folder.data_file)

    page.set_viewport(390, 844, mobile=True)
    page.open(report)
    narrow = page.evaluate(LAYOUT_JS)
    assert narrow["clientWidth"] == 390
    assert narrow["scrollWidth"] <= narrow["clientWidth"], narrow  # the page never scrolls sideways
    assert narrow["outside"] == []
    # The leaderboard is wider than the phone: it scrolls inside its own box, which stays on screen.
    assert narrow["boxScrollWidth"] > narrow["boxClientWidth"] and narrow["boxRight"] <= 390
    # Charts wrap to one column, each inside the screen.
    figures = narrow["figures"]
    assert len({f["left"] for f in figures}) == 1 and all(f["right"] <= 390 for f in figures)
    assert [f["top"] for f in figures] == sorted({f["top"] for f in figures})
    assert page.errors() == []
    page.screenshot(tmp_path / "report-390.png", full_page=True)

    page.set_viewport(1400, 1000)
    page.open(report)
    wide = page.evaluate(LAYOUT_JS)
    assert wide["scrollWidth"] <= wide["clientWidth"] and wide["outside"] == []
    rows: dict[int, list[dict[str, int]]] = {}
    for figure in wide["figures"]:
        rows.setdefault(figure["top"], []).append(figure)
    assert len(rows[min(rows)]) >= 3  # several charts side by side
    for row in rows.values():  # every row of charts spans the grid: no empty columns
        assert min(f["left"] for f in row) == wide["grid"]["left"], wide
        assert abs(max(f["right"] for f in row) - wide["grid"]["right"]) <= 1, wide
    assert page.errors() == []
    page.screenshot(tmp_path / "report-1400.png", full_page=True)


def test_browser_filters_and_sorts_samples(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    planted = folder.plant_prediction(folder.scored_models[1], 4, "A Zebracorn grazing near the pier.")
    page.open(build_report(folder.results, data_file=folder.data_file))

    # Query filter: exactly the samples of that query.
    query = folder.queries[1]
    info = page.evaluate(
        f"""(() => {{ const s = document.getElementById('filter-query');
            s.value = String({folder.queries.index(query)}); s.dispatchEvent(new Event('change'));
            return [document.getElementById('page-info').textContent,
                    Array.from(document.querySelectorAll('#samples .sample .query'))
                      .map((q) => q.textContent)]; }})()"""
    )
    expected_count = sum(1 for q in folder.sample_queries if q == query)
    assert info[0].startswith(f"1–{expected_count} of {expected_count}")
    assert set(info[1]) == {query}

    # Sort by disagreement: the first sample is the one whose BLEU-4 scores spread most across models.
    first = page.evaluate(
        """(() => { document.getElementById('filter-query').value = '';
            document.getElementById('score-metric').value = 'bleu4';
            const s = document.getElementById('sort-order'); s.value = 'spread-desc';
            s.dispatchEvent(new Event('change'));
            return document.querySelector('#samples .sample').dataset.sample; })()"""
    )
    assert first == folder.most_disagreed("bleu4")

    # Text search (case-insensitive, after the input's debounce) finds the one sample whose prediction has the word.
    found = page.evaluate(
        """new Promise((done) => { const input = document.getElementById('filter-text');
            input.value = 'zebraCORN'; input.dispatchEvent(new Event('input'));
            setTimeout(() => done(Array.from(document.querySelectorAll('#samples .sample'))
              .map((s) => s.dataset.sample)), 400); })"""
    )
    assert found == [planted]
    assert page.errors() == []


@pytest.mark.parametrize("variant", ["spice-unavailable", "metrics-only", "images-missing", "one-model"])
def test_report_with_missing_pieces_has_no_page_errors(page: Page, tmp_path: Path, request, variant: str) -> None:
    options: dict[str, object] = {"spice_available": variant != "spice-unavailable"}
    folder = synthetic_folder(tmp_path, request, **options)
    if variant == "metrics-only":
        for path in folder.results.iterdir():
            if not path.name.endswith("_metrics.json"):
                path.unlink()
    elif variant == "images-missing":
        for image in (folder.data_file.parent / "images").iterdir():
            image.unlink()
    elif variant == "one-model":
        for path in folder.results.iterdir():
            if path.is_file() and not path.name.startswith(folder.scored_models[0]):
                path.unlink()
    page.open(build_report(folder.results, data_file=None if variant == "metrics-only" else folder.data_file))
    state = page.evaluate(STATE_JS)
    assert state["ready"] == "1" and state["boardVisible"], state
    assert page.errors() == [] and state["jsErrors"] == ""
    expected_rows = {"one-model": 1, "metrics-only": len(folder.scored_models)}.get(variant, len(folder.models))
    assert len(state["boardRows"]) == expected_rows
    if variant == "metrics-only":
        assert state["predictions"] == [] and state["pageInfo"] == "0 of 0"
    else:
        assert len(state["predictions"]) >= 1 and all(visible for _, _, visible in state["predictions"])


# Each chart's SVG, laid out by the browser as a person sees it: y tick labels top to bottom, the bar of each label
# (its fill colour and drawn width), the x tick labels, and every pair of text boxes that overlap.
CHARTS_JS = """(() => {
  const host = document.createElement('div');
  host.style.cssText = 'position:absolute; left:0; top:0; width:600px;';
  document.body.appendChild(host);
  const charts = {};
  for (const figure of document.querySelectorAll('.charts figure')) {
    const img = figure.querySelector('img');
    if (!img) continue;
    const metric = figure.dataset.metric;
    const svg = new DOMParser().parseFromString(atob(img.src.split(',')[1]), 'image/svg+xml').documentElement;
    host.replaceChildren(svg);
    const middle = (r) => r.top + r.height / 2;
    const bars = Array.from(svg.querySelectorAll('g[id^="patch_"] path')).map((p) => ({
      fill: ((p.getAttribute('style') || '').match(/fill: (#[0-9a-f]{6})/) || [])[1], r: p.getBoundingClientRect()}))
      .filter((b) => b.fill && b.fill !== '#ffffff' && b.r.height > 0)
      .map((b) => ({fill: b.fill, width: b.r.width, middle: middle(b.r)}));
    const labels = Array.from(svg.querySelectorAll('g[id^="ytick_"] text')).map((t) => [t.textContent,
      middle(t.getBoundingClientRect())]).sort((a, b) => a[1] - b[1]);
    const texts = Array.from(svg.querySelectorAll('text')).filter((t) => t.textContent.trim())
      .map((t) => [t.textContent, t.getBoundingClientRect()]);
    const overlaps = [];
    texts.forEach(([a, ra], i) => texts.slice(i + 1).forEach(([b, rb]) => {
      const x = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
      const y = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
      if (x > 0.5 && y > 0.5) overlaps.push([a, b]);
    }));
    charts[metric] = {
      order: labels.map(([name]) => name),
      bars: Object.fromEntries(labels.map(([name, y]) => {
        const bar = bars.reduce((best, b) => Math.abs(b.middle - y) < Math.abs(best.middle - y) ? b : best);
        return [name, {fill: bar.fill, width: bar.width}];
      })),
      xticks: Array.from(svg.querySelectorAll('g[id^="xtick_"] text')).map((t) => t.textContent),
      overlaps,
    };
  }
  host.remove();
  const swatches = Object.fromEntries(Array.from(document.querySelectorAll('#leaderboard tbody tr')).map((r) => {
    const s = r.querySelector('.swatch');
    return [r.dataset.model, s ? getComputedStyle(s).backgroundColor : null];
  }));
  return {charts, swatches};
})()"""


def rgb(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def test_every_chart_shows_the_ranking_order_in_one_colour_per_model(page: Page, tmp_path: Path, request) -> None:
    """1400 px: each chart lists the models best-first by the leaderboard's metric (CIDEr), not by its own; a model
    has one colour in every chart, the colour of its swatch in the leaderboard; no two labels overlap; a metric whose
    values are ~1e-14 is drawn as zero bars on a plain axis (no 1e-10 multiplier or offset)."""
    folder = synthetic_folder(tmp_path, request)
    order = folder.ranked("cider")
    # METEOR in the reverse order of CIDEr: its chart must still follow the ranking.
    for value, model in enumerate(order, start=1):
        folder.patch_metrics(model, metrics=folder.metrics(model).metrics | {"meteor": value / 10})
    # COCO BLEU-4 zero to within rounding, as tiny random-weight models score it.
    for index, model in enumerate(order):
        metrics = folder.metrics(model)
        folder.patch_metrics(
            model,
            metrics=metrics.metrics | {"coco_bleu4": (index + 1) * 1e-14},
            ci=metrics.ci | {"coco_bleu4": [0.0, (index + 2) * 1e-14]},
        )
    page.open(build_report(folder.results, data_file=folder.data_file))
    seen = page.evaluate(CHARTS_JS)
    charts, swatches = seen["charts"], seen["swatches"]
    assert set(charts) >= {"cider", "meteor", "bleu4", "coco_bleu4", "rougeL"}, sorted(charts)
    colours: dict[str, set[str]] = {}
    for metric, chart in charts.items():
        assert chart["order"] == order, metric
        assert chart["overlaps"] == [], (metric, chart["overlaps"])
        assert chart["xticks"] and all(re.fullmatch(r"\d+(\.\d+)?", tick) for tick in chart["xticks"]), chart
        for model, bar in chart["bars"].items():
            colours.setdefault(model, set()).add(bar["fill"])
    assert all(len(found) == 1 for found in colours.values()), colours
    assert len({next(iter(found)) for found in colours.values()}) == len(order)  # one colour per model
    assert {model: rgb(next(iter(colours[model]))) for model in order} == {m: swatches[m] for m in order}
    assert all(bar["width"] < 0.5 for bar in charts["coco_bleu4"]["bars"].values()), charts["coco_bleu4"]
    assert all(bar["width"] > 1 for bar in charts["cider"]["bars"].values())
    assert page.errors() == []
    page.screenshot(tmp_path / "report-charts-1400.png", full_page=True)


SCORE_BESIDE_NAME_JS = """(() => Array.from(document.querySelectorAll('#leaderboard tbody tr')).map((r) => {
  const score = r.querySelector('.rank-score'), name = r.querySelector('td.model').getBoundingClientRect();
  const box = score.getBoundingClientRect();
  return {model: r.dataset.model, text: score.textContent, visible: score.checkVisibility() && box.width > 0,
    right: box.right, sameLine: Math.abs(box.top - name.top) < name.height};
}))()"""


def test_on_a_phone_the_ranking_score_stays_beside_the_model_name(page: Page, tmp_path: Path, request) -> None:
    """390 px: without scrolling the leaderboard sideways, each ranked row shows the ranking metric's score next to
    the model's name, and it follows a change of ranking metric; at 1400 px the metric column shows it instead."""
    folder = synthetic_folder(tmp_path, request)
    report = build_report(folder.results, data_file=folder.data_file)
    page.set_viewport(390, 844, mobile=True)
    page.open(report)
    for metric in ("cider", "meteor"):
        if metric != "cider":
            choose(page, "rank-metric", metric)
        rows = {row["model"]: row for row in page.evaluate(SCORE_BESIDE_NAME_JS)}
        for model in folder.ranked(metric):
            row = rows[model]
            assert row["visible"] and row["sameLine"] and row["right"] <= 390, row
            assert row["text"] == x100(folder.metrics(model).metrics[metric]), (metric, row)
        assert rows[FAILED]["text"] == ""
        page.screenshot(tmp_path / f"report-390-{metric}.png")
    assert page.errors() == []
    page.set_viewport(1400, 1000)
    page.open(report)
    assert not any(row["visible"] for row in page.evaluate(SCORE_BESIDE_NAME_JS))


def test_per_query_and_samples_follow_the_ranking_metric(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    page.open(build_report(folder.results, data_file=folder.data_file))
    selects = "['heatmap-metric', 'score-metric', 'significance-metric'].map((i) => document.getElementById(i).value)"
    note = (
        "(() => { const n = document.getElementById('score-note');"
        " return n.checkVisibility() ? n.textContent : null; })()"
    )
    # CIDEr ranks by default; CIDEr has a per-sample score, so the samples show it too.
    assert page.evaluate(selects) == ["cider", "cider", "cider"]
    assert page.evaluate(note) is None
    choose(page, "rank-metric", "meteor")
    assert page.evaluate(selects) == ["meteor", "meteor", "meteor"]
    choose(page, "rank-metric", "coco_bleu4")  # a corpus statistic only: the samples keep their score and say why
    shown = page.evaluate(selects)
    assert shown[0] == "coco_bleu4" and shown[1] == "meteor", shown
    assert page.evaluate(note) == "BLEU-4 (COCO) has no per-sample score (a corpus statistic only)"
    assert page.errors() == []


def test_shared_ranks_are_marked_and_explained(page: Page, tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    best, second, third = folder.ranked("cider")
    tied_value = folder.metrics(second).metrics["cider"]
    folder.patch_metrics(third, metrics=folder.metrics(third).metrics | {"cider": tied_value})
    page.open(build_report(folder.results, data_file=folder.data_file))
    rows = page.evaluate(
        "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map((r) => [r.dataset.model,"
        " r.querySelector('td.rank').textContent, r.querySelector('td.rank').title])"
    )
    ranks = {model: (rank, title) for model, rank, title in rows}
    assert ranks[best] == ("1", "")
    assert ranks[second][0] == ranks[third][0] == "=2"
    assert third in ranks[second][1] and second in ranks[third][1] and x100(tied_value) in ranks[second][1]
    note = page.evaluate(
        "(() => { const n = document.querySelector('#leaderboard-section li.ties');"
        " return n && n.checkVisibility() ? n.textContent : null; })()"
    )
    assert note is not None and "=N" in note and "shared" in note
    # Ranked by a metric without ties, the ranks are plain again and the explanation still applies to CIDEr.
    choose(page, "rank-metric", "bleu4")
    assert all(
        not rank.startswith("=")
        for _, rank, _ in page.evaluate(
            "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map((r) => [r.dataset.model,"
            " r.querySelector('td.rank').textContent, ''])"
        )
    )
    assert page.errors() == []
