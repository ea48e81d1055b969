"""Hand-made inline SVG charts for the HTML reports: no plotting library, no script needed to draw them.

Every chart is one `<svg class="plot">` whose data marks carry the class `data` (a `path` per line, a
`circle` per point, each with a `<title>` tooltip), so a test can check that a chart is not blank.
Non-finite values (logged as "nan"/"inf" strings) are skipped, not drawn at 0.

Line charts are interactive with the small script INTERACTIVE_JS (a few kB, inline, no library): click a legend
entry to hide or show its series, hover for the values of every shown series at the nearest step, drag across
the chart to zoom into a step range (the y axis fits the points in it), double-click to zoom out. Without
script the chart is the same static picture. docs/reports.md says why this and not a plotting library.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from html import escape

WIDTH, HEIGHT = 480, 280
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 28, 68  # room for tick labels, the title and the legend

# values closer than this (relative to their size) are one value to an axis: float rounding, not a difference
FLAT = 1e-9
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    dashed: bool = False  # train curves are dashed, held-out curves solid with a dot per evaluation
    dots: bool = True
    width: float = 1.8


@dataclass
class Marker:
    """A vertical line at x (best step, early-stopping point, overfitting onset)."""

    x: float
    label: str
    color: str


@dataclass
class ScatterPoint:
    x: float | str
    y: float
    tooltip: str
    color: str = PALETTE[0]


@dataclass
class _Frame:
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    log_x: bool = False
    integer_x: bool = False
    parts: list[str] = field(default_factory=list)
    height: int = HEIGHT  # taller when the legend needs more rows than BOTTOM has room for

    def px(self, x: float) -> float:
        if self.log_x:
            x, lo, hi = math.log10(x), math.log10(self.x_lo), math.log10(self.x_hi)
        else:
            lo, hi = self.x_lo, self.x_hi
        return LEFT + (x - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y_lo) / (self.y_hi - self.y_lo) * (HEIGHT - TOP - BOTTOM)


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: float) -> str:
    """Short tick/tooltip text: a whole number (a step) in full, else 3 significant digits, no trailing noise; the
    same text as the page script's fmt (INTERACTIVE_JS)."""
    if value == 0:
        return "0"
    if not 1e-3 <= abs(value) < 1e5:
        return f"{value:.2e}"
    if float(value).is_integer():  # step 1234 is "1234", not 1.23e+03 (nor a step 1230 that was never logged)
        return str(int(value))
    # 3 significant digits as JavaScript's String(+v.toPrecision(3)) writes them: 1234.5 -> 1230, and a tie rounded
    # away from zero (0.5625 -> 0.563, where Python's format rounds to even: 0.562)
    exact = Decimal(value)
    rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), rounding=ROUND_HALF_UP)
    return f"{float(rounded):.15g}"


def padded_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo <= FLAT * max(abs(lo), abs(hi)):
        # a constant series (beta, a flat metric), or values equal but for rounding (two means of the same pairs):
        # a visible band around the value, where a span of 1e-16 would ask for ticks 1e-17 apart
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def tick_text(value: float, ticks: list[float]) -> str:
    """Enough decimals to tell neighbouring ticks apart (0.6925 vs 0.693), no more."""
    if len(ticks) < 2 or not 1e-4 <= max(abs(t) for t in ticks) < 1e5:
        return fmt(value)
    step = abs(ticks[1] - ticks[0])
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10**decimals, 6) % 1:  # steps like 0.25 need one more digit
        decimals += 1
    return f"{value:.{decimals}f}"


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi]; `integer` for step axes (no 2.5 steps, none below 1)."""
    span = hi - lo
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    if integer and step < 1:
        step = 1
    for mult in (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10):
        if span / (step * mult) <= count:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    # counted, not stepped until past hi: a step below the values' float resolution would never get there
    values = (first + i * step for i in range(math.floor((hi - first) / step + 1e-9) + 1))
    return [0.0 if abs(value) < step * 1e-9 else value for value in values]


def _axes(frame: _Frame, title: str, x_label: str, y_label: str, x_ticks: list[tuple[float, str]] | None = None):
    p = frame.parts
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP
    p.append(f'<text class="title" x="{LEFT}" y="16">{escape(title)}</text>')
    p.append('<g class="ticks">')  # the grid and tick labels, redrawn by INTERACTIVE_JS on zoom
    y_ticks = nice_ticks(frame.y_lo, frame.y_hi)
    for t in y_ticks:
        y = frame.py(t)
        p.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
        p.append(f'<text class="tick" x="{x0 - 4}" y="{y + 3:.1f}" text-anchor="end">{tick_text(t, y_ticks)}</text>')
    if x_ticks is None:
        if frame.log_x:
            x_ticks = [(t, fmt(t)) for t in _log_ticks(frame.x_lo, frame.x_hi)]
        else:
            numeric = nice_ticks(frame.x_lo, frame.x_hi, integer=frame.integer_x)
            x_ticks = [(t, tick_text(t, numeric)) for t in numeric]
    for t, text in x_ticks:
        x = frame.px(t)
        p.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}"/>')
        p.append(f'<text class="tick" x="{x:.1f}" y="{y0 + 13}" text-anchor="middle">{escape(text)}</text>')
    p.append("</g>")
    p.append(f'<rect class="frame" x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}"/>')
    p.append(f'<text class="axis" x="{(x0 + x1) / 2}" y="{y0 + 26}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        p.append(
            f'<text class="axis" transform="translate(12,{(y0 + y1) / 2}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) if lo <= 10.0**e <= hi]


LEGEND_ROW = 14  # px between legend rows
LEGEND_LABEL_CHARS = (WIDTH - LEFT - 28) // 6  # a longer label is cut (its whole text in its tooltip)


def _legend(frame: _Frame, entries: list[tuple[str, str, bool]], toggles: bool = False) -> None:
    """Legend entries in rows under the plot; the chart grows by a row for each row past the second (a sweep's
    pruned trials, `dpo compare` of five runs), so no entry falls outside it."""
    x, y = LEFT, HEIGHT - 26
    for i, (full_label, color, dashed) in enumerate(entries):
        label = full_label if len(full_label) <= LEGEND_LABEL_CHARS else full_label[: LEGEND_LABEL_CHARS - 1] + "…"
        if x > LEFT and x + 28 + 6 * len(label) > WIDTH:  # wrap onto the next row
            x, y = LEFT, y + LEGEND_ROW
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        if toggles:  # a click on the entry hides / shows series i (INTERACTIVE_JS)
            frame.parts.append(f'<g class="legend-item" data-series="{i}"><title>click: hide / show</title>')
        frame.parts.append(
            f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" stroke-width="2"{dash}/>'
        )
        whole = f"<title>{escape(full_label)}</title>" if label != full_label else ""
        frame.parts.append(f'<text class="legend" x="{x + 20}" y="{y}">{whole}{escape(label)}</text>')
        if toggles:
            frame.parts.append("</g>")
        x += 28 + 6 * len(label)
    frame.height = max(HEIGHT, y + 12)


def _svg(frame: _Frame, title: str, attributes: str = "") -> str:
    body = "".join(frame.parts)
    return (
        f'<svg class="plot"{attributes} data-title="{escape(title)}" viewBox="0 0 {WIDTH} {frame.height}" '
        f'width="{WIDTH}" height="{frame.height}" xmlns="http://www.w3.org/2000/svg" role="img">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )


def line_chart(
    title: str,
    series: list[Series],
    x_range: tuple[float, float],
    markers: list[Marker] = (),
    x_label: str = "step",
    y_label: str = "",
) -> str | None:
    """Lines over a shared x range, with vertical markers. None when no series has a finite point."""
    series = [Series(s.label, [(x, y) for x, y in s.points if finite(x) and finite(y)], *_style(s)) for s in series]
    series = [s for s in series if s.points]
    if not series:
        return None
    y_lo, y_hi = padded_range([y for s in series for _, y in s.points])
    x_lo, x_hi = x_range if x_range[1] > x_range[0] else (x_range[0] - 1, x_range[0] + 1)
    frame = _Frame(x_lo, x_hi, y_lo, y_hi, integer_x=x_label == "step")
    _axes(frame, title, x_label, y_label)
    for m in markers:
        if x_lo <= m.x <= x_hi:
            x = frame.px(m.x)
            frame.parts.append(
                f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" data-x="{m.x}" '
                f'stroke="{m.color}"><title>{escape(m.label)} (step {fmt(m.x)})</title></line>'
            )
    for i, s in enumerate(series):
        # the points in data units and the label, for the hover readout and the zoom of INTERACTIVE_JS
        data = escape(json.dumps({"label": s.label, "xy": s.points}, separators=(",", ":")))
        frame.parts.append(f'<g class="series" data-series="{i}" data-points="{data}">')
        coords = [(frame.px(x), frame.py(y)) for x, y in s.points]
        if len(coords) > 1:
            d = "M" + "L".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
            dash = ' stroke-dasharray="5,3"' if s.dashed else ""
            frame.parts.append(
                f'<path class="data" d="{d}" fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash}>'
                f"<title>{escape(s.label)}</title></path>"
            )
        if s.dots or len(coords) == 1:
            for (x, y), (cx, cy) in zip(s.points, coords, strict=True):
                frame.parts.append(
                    f'<circle class="data" cx="{cx:.1f}" cy="{cy:.1f}" r="2.6" fill="{s.color}">'
                    f"<title>{escape(s.label)}: step {fmt(x)}, {fmt(y)}</title></circle>"
                )
        frame.parts.append("</g>")
    _legend(frame, [(s.label, s.color, s.dashed) for s in series], toggles=True)
    box = {"x": [x_lo, x_hi], "y": [y_lo, y_hi], "px": [LEFT, WIDTH - RIGHT], "py": [HEIGHT - BOTTOM, TOP],
           "integer": frame.integer_x}  # fmt: skip
    return _svg(frame, title, f' data-frame="{escape(json.dumps(box))}"')


def _style(s: Series) -> tuple:
    return s.color, s.dashed, s.dots, s.width


def scatter_chart(title: str, points: list[ScatterPoint], x_label: str, y_label: str) -> str | None:
    """Objective against one hyperparameter. Numeric x on a log axis when it spans two decades or more;
    text x (categorical parameters) at evenly spaced positions. None when there is no finite point."""
    points = [p for p in points if finite(p.y) and (isinstance(p.x, str) or finite(p.x))]
    if not points:
        return None
    categories = sorted({str(p.x) for p in points}) if any(isinstance(p.x, str) for p in points) else None
    if categories:
        xs = [float(categories.index(str(p.x))) for p in points]
        x_lo, x_hi, log_x = -0.5, len(categories) - 0.5, False
    else:
        xs = [float(p.x) for p in points]
        log_x = min(xs) > 0 and max(xs) / min(xs) >= 100
        if log_x:
            x_lo, x_hi = min(xs) / 1.5, max(xs) * 1.5
        else:
            x_lo, x_hi = padded_range(xs)
    y_lo, y_hi = padded_range([p.y for p in points])
    frame = _Frame(x_lo, x_hi, y_lo, y_hi, log_x=log_x)
    ticks = [(float(i), name) for i, name in enumerate(categories)] if categories else None
    _axes(frame, title, x_label + (" (log scale)" if log_x else ""), y_label, ticks)
    for p, x in zip(points, xs, strict=True):
        frame.parts.append(
            f'<circle class="data" cx="{frame.px(x):.1f}" cy="{frame.py(p.y):.1f}" r="4" fill="{p.color}" '
            f'fill-opacity="0.8"><title>{escape(p.tooltip)}</title></circle>'
        )
    return _svg(frame, title)


# The interactivity of the line charts (module docstring). Reads data-frame (the axes' data and pixel ranges) and each
# series' data-points; redraws paths, dots, markers and ticks for the zoomed range with the same rules as the Python
# above (nice_ticks, padded_range, fmt).
INTERACTIVE_JS = """
(function () {
  var NS = 'http://www.w3.org/2000/svg', FLAT = <FLAT>;
  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === 0) return '0';
    var a = Math.abs(v);
    if (!(a >= 1e-3 && a < 1e5)) return v.toExponential(2);
    return Number.isInteger(v) ? String(v) : String(+v.toPrecision(3));
  }
  function tickText(v, ticks) {  // tick_text above: enough decimals to tell neighbouring ticks apart
    var top = Math.max.apply(null, ticks.map(Math.abs));
    if (ticks.length < 2 || !(top >= 1e-4 && top < 1e5)) return fmt(v);
    var step = Math.abs(ticks[1] - ticks[0]), decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    if ((Math.round(step * Math.pow(10, decimals) * 1e6) / 1e6) % 1) decimals += 1;
    return v.toFixed(decimals);
  }
  function niceTicks(lo, hi, integer) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / 5)));
    if (integer && step < 1) step = 1;
    var mults = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    for (var i = 0; i < mults.length; i++) { if (span / (step * mults[i]) <= 5) { step *= mults[i]; break; } }
    var out = [], first = Math.ceil(lo / step) * step, n = Math.floor((hi - first) / step + 1e-9) + 1;
    for (var i = 0; i < n; i++) { var v = first + i * step; out.push(Math.abs(v) < step * 1e-9 ? 0 : v); }
    return out;
  }
  function padded(values) {
    var lo = Infinity, hi = -Infinity;  // a loop: Math.min.apply overflows the stack past ~125,000 values
    for (var i = 0; i < values.length; i++) { if (values[i] < lo) lo = values[i]; if (values[i] > hi) hi = values[i]; }
    if (hi - lo <= FLAT * Math.max(Math.abs(lo), Math.abs(hi))) {
      var p = Math.abs(lo) * 0.1 || 1; return [lo - p, hi + p];
    }
    var pad = (hi - lo) * 0.06; return [lo - pad, hi + pad];
  }
  document.querySelectorAll('svg.plot[data-frame]').forEach(function (svg) {
    var home = JSON.parse(svg.dataset.frame), view = {x: home.x.slice(), y: home.y.slice()};
    var groups = Array.prototype.slice.call(svg.querySelectorAll('g.series'));
    var series = groups.map(function (g) { return JSON.parse(g.dataset.points); });
    var hidden = groups.map(function () { return false; });
    var X0 = home.px[0], X1 = home.px[1], Y0 = home.py[0], Y1 = home.py[1];
    function px(x) { return X0 + (x - view.x[0]) / (view.x[1] - view.x[0]) * (X1 - X0); }
    function py(y) { return Y0 + (y - view.y[0]) / (view.y[1] - view.y[0]) * (Y1 - Y0); }
    function dataX(event) {
      var pt = svg.createSVGPoint(); pt.x = event.clientX; pt.y = event.clientY;
      var p = pt.matrixTransform(svg.getScreenCTM().inverse());
      var sx = Math.min(Math.max(p.x, X0), X1);
      return {sx: sx, x: view.x[0] + (sx - X0) / (X1 - X0) * (view.x[1] - view.x[0])};
    }
    function inside(x) { return x >= view.x[0] - 1e-9 && x <= view.x[1] + 1e-9; }
    function fitY() {
      var ys = [];
      series.forEach(function (s, i) {
        if (!hidden[i]) s.xy.forEach(function (p) { if (inside(p[0])) ys.push(p[1]); });
      });
      if (ys.length) view.y = padded(ys);
    }
    function draw() {
      groups.forEach(function (g, i) {
        g.style.display = hidden[i] ? 'none' : '';
        var xy = series[i].xy, path = g.querySelector('path'), circles = g.querySelectorAll('circle');
        var shown = xy.filter(function (p) { return inside(p[0]); });
        var d = shown.map(function (p) { return px(p[0]).toFixed(1) + ',' + py(p[1]).toFixed(1); }).join('L');
        if (path) path.setAttribute('d', shown.length ? 'M' + d : 'M0,0');
        if (path) path.style.display = shown.length > 1 ? '' : 'none';
        xy.forEach(function (p, j) {
          var c = circles[j]; if (!c) return;
          c.style.display = inside(p[0]) ? '' : 'none';
          c.setAttribute('cx', px(p[0]).toFixed(1)); c.setAttribute('cy', py(p[1]).toFixed(1));
        });
      });
      svg.querySelectorAll('line.marker').forEach(function (m) {
        var x = parseFloat(m.dataset.x);
        m.style.display = inside(x) ? '' : 'none';
        m.setAttribute('x1', px(x).toFixed(1)); m.setAttribute('x2', px(x).toFixed(1));
      });
      var ticks = svg.querySelector('g.ticks');
      while (ticks.firstChild) ticks.removeChild(ticks.firstChild);
      var yTicks = niceTicks(view.y[0], view.y[1], false), xTicks = niceTicks(view.x[0], view.x[1], home.integer);
      yTicks.forEach(function (t) {
        var y = py(t).toFixed(1);
        ticks.appendChild(el('line', {'class': 'grid', x1: X0, x2: X1, y1: y, y2: y}));
        var label = tickText(t, yTicks);
        ticks.appendChild(el('text', {'class': 'tick', x: X0 - 4, y: +y + 3, 'text-anchor': 'end'}, label));
      });
      xTicks.forEach(function (t) {
        var x = px(t).toFixed(1);
        ticks.appendChild(el('line', {'class': 'grid', x1: x, x2: x, y1: Y0, y2: Y1}));
        var label = tickText(t, xTicks);
        ticks.appendChild(el('text', {'class': 'tick', x: x, y: Y0 + 13, 'text-anchor': 'middle'}, label));
      });
    }
    svg.querySelectorAll('g.legend-item').forEach(function (item) {
      item.style.cursor = 'pointer';
      item.addEventListener('click', function () {
        var i = +item.dataset.series; hidden[i] = !hidden[i];
        item.style.opacity = hidden[i] ? 0.35 : 1; fitY(); draw();
      });
    });
    // hover readout, drag-to-zoom and double-click-to-reset on a transparent layer over the plot area
    var guide = el('line', {'class': 'guide', y1: Y1, y2: Y0, stroke: '#888', display: 'none'});
    var band = el('rect', {'class': 'band', y: Y1, height: Y0 - Y1, fill: '#1f77b4', 'fill-opacity': 0.12});
    band.setAttribute('display', 'none');
    var readout = el('text', {'class': 'readout', x: X0 + 6, y: Y1 + 12});
    var layer = el('rect', {'class': 'hover', x: X0, y: Y1, width: X1 - X0, height: Y0 - Y1, fill: 'transparent'});
    [guide, band, readout, layer].forEach(function (e) { svg.appendChild(e); });
    var start = null;
    layer.addEventListener('mousedown', function (e) { start = dataX(e); e.preventDefault(); });
    layer.addEventListener('mousemove', function (e) {
      var at = dataX(e), best = null;
      series.forEach(function (s, i) {
        if (hidden[i]) return;
        s.xy.forEach(function (p) {
          if (inside(p[0]) && (best === null || Math.abs(p[0] - at.x) < Math.abs(best - at.x))) best = p[0];
        });
      });
      while (readout.firstChild) readout.removeChild(readout.firstChild);
      if (start) {
        band.setAttribute('display', '');
        band.setAttribute('x', Math.min(start.sx, at.sx)); band.setAttribute('width', Math.abs(at.sx - start.sx));
      }
      if (best === null) { guide.setAttribute('display', 'none'); return; }
      guide.setAttribute('display', ''); guide.setAttribute('x1', px(best)); guide.setAttribute('x2', px(best));
      readout.appendChild(el('tspan', {x: X0 + 6, dy: 0, 'font-weight': 600}, 'step ' + fmt(best)));
      series.forEach(function (s, i) {
        if (hidden[i]) return;
        var hit = s.xy.filter(function (p) { return p[0] === best; })[0];
        if (hit) readout.appendChild(el('tspan', {x: X0 + 6, dy: 12}, s.label + ': ' + fmt(hit[1])));
      });
    });
    layer.addEventListener('mouseleave', function () {
      guide.setAttribute('display', 'none'); band.setAttribute('display', 'none'); start = null;
      while (readout.firstChild) readout.removeChild(readout.firstChild);
    });
    layer.addEventListener('mouseup', function (e) {
      var end = dataX(e); band.setAttribute('display', 'none');
      if (start && Math.abs(end.sx - start.sx) > 5) {
        view.x = [Math.min(start.x, end.x), Math.max(start.x, end.x)]; fitY(); draw();
      }
      start = null;
    });
    layer.addEventListener('dblclick', function () { view = {x: home.x.slice(), y: home.y.slice()}; draw(); });
  });
})();
""".replace("<FLAT>", repr(FLAT))
