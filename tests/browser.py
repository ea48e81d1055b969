"""Open an HTML report in headless Chromium (Debian's `chromium`, driven by playwright without downloading a
browser) and report what a person would notice: console errors, network requests, blank or broken charts."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Per chart: how many data marks it has, how many fall outside the chart or have no finite coordinates,
# and the extent they cover. A chart whose marks all sit on one pixel, or that has none, is blank.
PLOTS_JS = """
() => Array.from(document.querySelectorAll('svg.plot')).map(function (svg) {
  var vb = svg.viewBox.baseVal, marks = Array.from(svg.querySelectorAll('.data'));
  var xs = [], ys = [], bad = 0;
  marks.forEach(function (m) {
    var b = m.getBBox(), d = m.getAttribute('d') || '';
    var ok = [b.x, b.y, b.width, b.height].every(Number.isFinite) && d.indexOf('NaN') < 0;
    if (!ok || b.x < 0 || b.y < 0 || b.x + b.width > vb.width || b.y + b.height > vb.height) { bad++; return; }
    xs.push(b.x, b.x + b.width); ys.push(b.y, b.y + b.height);
  });
  var r = svg.getBoundingClientRect();
  var span = function (v) { return v.length ? Math.max.apply(null, v) - Math.min.apply(null, v) : 0; };
  return {title: svg.dataset.title, marks: marks.length, bad: bad, spanX: span(xs), spanY: span(ys),
          width: r.width, height: r.height};
})
"""


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    plots: list[dict] = field(default_factory=list)
    script_result: object = None

    def blank_plots(self) -> list[str]:
        return [
            f"{p['title']}: {p}"
            for p in self.plots
            if p["marks"] == 0 or p["bad"] > 0 or (p["spanX"] <= 0 and p["spanY"] <= 0) or p["width"] <= 0
        ]


def chromium_or_skip() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it with apt)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    return path


def open_in_browser(html: Path, screenshot: Path, chromium: str, script: str | None = None) -> PageCheck:
    """Load `html`, collect console errors and non-local requests, measure every chart, run `script` (a JS
    function, e.g. one that clicks a header) after taking a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    check = PageCheck()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: m.type == "error" and check.console_errors.append(m.text))
            page.on("pageerror", lambda e: check.console_errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: r.url.startswith(("file:", "data:")) or check.requests.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            check.plots = page.evaluate(PLOTS_JS)
            page.screenshot(path=str(screenshot), full_page=True)
            if script:
                check.script_result = page.evaluate(script)
        finally:
            browser.close()
    return check
