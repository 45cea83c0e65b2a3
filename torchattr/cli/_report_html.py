"""The HTML of ``torchattr report``: one self-contained page, standard library only.

:func:`page` assembles the sections from a :class:`torchattr.cli.report.Run` and its pictures.
Every value the page prints is escaped (:func:`html.escape`); the gallery's data travel as
JSON in a ``<script type="application/json">`` element (``<`` escaped, so no value can close
it) and a few lines of vanilla JavaScript sort, filter and page them. No external resources:
styles, scripts, colour bars (CSS gradients) and distribution plots (inline SVG) are in the
page, pictures in ``img/`` next to it.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np

from torchattr.metrics.directions import direction
from torchattr.viz import colormap, display_name

BINS = 20  # histogram bins of the distribution plots


def page(
    run: Any,
    pictures: Any,
    *,
    threshold: float,
    page_size: int,
    generated: list[tuple[str, str]],
) -> str:
    """The whole ``index.html``."""
    parts = [("Provenance", _key_values(run.provenance + generated), "provenance")]
    if run.methods:
        parts += [
            ("Methods compared", _methods_table(run), "comparison"),
            ("Distributions", _distributions(run), "distributions"),
        ]
    parts += run.extra_sections
    if run.methods:
        parts.append(("Gallery", _gallery_controls(run, threshold), "gallery-section"))
    parts.append(("Failures and skipped images", _failures(run, pictures), "failures"))
    sections = [_notes(run.notes)] + [_section(*part) for part in parts]
    nav = " · ".join(f'<a href="#{anchor}">{_e(title.lower())}</a>' for title, _, anchor in parts)
    data = _gallery_data(run, pictures, page_size)
    return TEMPLATE.format(
        title=_e(run.title),
        nav=nav,
        style=STYLE,
        body="\n".join(s for s in sections if s),
        data=json.dumps(data, allow_nan=False).replace("<", "\\u003c"),
        script=SCRIPT,
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, content: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{content}\n</section>'


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<div class="notes" role="note"><strong>Notes</strong><ul>{items}</ul></div>'


def _key_values(items: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="provenance">{rows}</table>'


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _methods_table(run: Any) -> str:
    """Mean +- std (n) per method and metric; the best mean per column marked; references."""
    if not run.metrics:
        return "<p>No metric was computed for this run.</p>"
    best = {}
    for metric in run.metrics:
        means = [
            run.summary[m][metric]["mean"]
            for m in run.methods
            if run.summary[m].get(metric, {}).get("mean") is not None
        ]
        if means:
            best[metric] = direction(metric).best(means)
    head = ['<th data-col="0" title="click to sort">method</th>']
    for k, metric in enumerate(run.metrics, start=1):
        way = direction(metric)
        arrow = "↑" if way.higher_is_better else "↓"
        note = f"{way.word} is better" + (f"; {way.note}" if way.note else "")
        head.append(
            f'<th data-col="{k}" data-metric="{_e(metric)}" title="{_e(note)}; click to sort">'
            f"{_e(display_name(metric))} {arrow}<br><small>{way.word} is better</small>"
            + (f'<br><small class="caveat">⚠ {_e(way.caveat)}</small>' if way.caveat else "")
            + "</th>"
        )
    rows = [
        _table_row(name, run.summary[name], run.metrics, best, reference=False)
        for name in run.methods
    ]
    references = [
        _table_row(name, stats, run.metrics, {}, reference=True)
        for name, stats in run.references.items()
    ]
    toggles = " ".join(
        f'<label><input type="checkbox" checked data-metric-toggle="{_e(m)}"> '
        f"{_e(display_name(m))}</label>"
        for m in run.metrics
    )
    caption = (
        f"Mean ± {run.std_kind} standard deviation over the images (n). ★ marks the best mean "
        "of each column in its direction (↑ higher is better, ↓ lower is better)."
    )
    for metric in run.metrics:  # where a metric misleads, say so under the table
        if direction(metric).note:
            caption += f" ⚠ {display_name(metric)} {direction(metric).note}."
    return (
        '<div class="controls"><label>Filter methods <input id="method-filter" type="search" '
        f'placeholder="e.g. cam"></label> <span class="toggles">Metrics: {toggles}</span></div>'
        f'<table id="methods" class="sortable"><caption>{_e(caption)}</caption>'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(rows)}</tbody>"
        f'<tbody class="reference">{"".join(references)}</tbody></table>'
    )


def _table_row(
    name: str,
    stats: dict[str, dict[str, Any]],
    metrics: list[str],
    best: dict[str, float],
    *,
    reference: bool,
) -> str:
    label = display_name(name) if not reference else name
    cells = [f'<th scope="row" data-value="{_e(name)}">{_e(label)}</th>']
    for metric in metrics:
        entry = stats.get(metric)
        if not entry or entry.get("mean") is None:
            cells.append(f'<td data-metric="{_e(metric)}" data-value="">–</td>')
            continue
        mean, std, n = entry["mean"], entry.get("std"), entry.get("n")
        marked = metric in best and mean == best[metric]
        text = f"{_number(mean)} ± {_number(std)}" + (f" <small>(n={n})</small>" if n else "")
        star = ' <span class="star" title="best">★</span>' if marked else ""
        cls = ' class="best"' if marked else ""
        cells.append(
            f'<td data-metric="{_e(metric)}" data-value="{mean!r}" data-std="{std!r}"'
            f"{cls}>{text}{star}</td>"
        )
    kind = "reference" if reference else "method"
    return f'<tr data-method="{_e(name)}" data-kind="{kind}">{"".join(cells)}</tr>'


def _distributions(run: Any) -> str:
    """One inline SVG per metric: a histogram row per method over the images' values."""
    if not run.metrics:
        return "<p>No metric was computed for this run.</p>"
    figures = []
    for metric in run.metrics:
        per_method = {
            m: np.array(
                [
                    e.values[m][metric]
                    for e in run.images
                    if m in e.values and e.values[m].get(metric) is not None
                ],
                dtype=np.float64,
            )
            for m in run.methods
        }
        values = [v for v in per_method.values() if v.size]
        if not values:
            continue
        everything = np.concatenate(values)
        low, high = float(everything.min()), float(everything.max())
        figures.append(_histogram_svg(metric, per_method, low, high))
    return '<div class="distributions">' + "".join(figures) + "</div>"


def _histogram_svg(
    metric: str,
    per_method: dict[str, np.ndarray],
    low: float,
    high: float,
    caption: str | None = None,
) -> str:
    label_width, plot_width, row_height = 150, 240, 22
    height = row_height * len(per_method) + 30
    span = high - low if high > low else 1.0
    if caption is None:
        caption = f"{display_name(metric)} ({direction(metric).word} is better)"
    parts = [
        f'<figure class="dist"><figcaption>{_e(caption)}</figcaption>'
        f'<svg width="{label_width + plot_width + 10}" height="{height}" role="img" '
        f'aria-label="{_e(metric)} distributions">'
    ]
    for row, (method, values) in enumerate(per_method.items()):
        top = row * row_height + 4
        parts.append(
            f'<text x="{label_width - 6}" y="{top + 14}" text-anchor="end">'
            f"{_e(display_name(method))}</text>"
        )
        parts.append(
            f'<line x1="{label_width}" x2="{label_width + plot_width}" y1="{top + row_height - 4}"'
            f' y2="{top + row_height - 4}" class="axis"/>'
        )
        if not values.size:
            continue
        counts, _ = np.histogram(values, bins=BINS, range=(low, low + span))
        width = plot_width / BINS
        for b, count in enumerate(counts):
            if count:
                h = (row_height - 6) * count / counts.max()
                parts.append(
                    f'<rect x="{label_width + b * width:.1f}" y="{top + row_height - 4 - h:.1f}" '
                    f'width="{width - 1:.1f}" height="{h:.1f}"><title>{count}</title></rect>'
                )
        x = label_width + plot_width * (float(values.mean()) - low) / span
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row_height - 4}" '
            f'class="mean"><title>mean {values.mean():.4f}</title></line>'
        )
    bottom = row_height * len(per_method) + 20
    parts.append(f'<text x="{label_width}" y="{bottom}">{low:.3g}</text>')
    parts.append(
        f'<text x="{label_width + plot_width}" y="{bottom}" text-anchor="end">{high:.3g}</text>'
    )
    parts.append("</svg></figure>")
    return "".join(parts)


def colorbar_css(cmap: str | None = None, stops: int = 11) -> str:
    """A CSS ``linear-gradient`` through ``stops`` colours of the colormap, low to high."""
    table = colormap(cmap) if cmap else colormap()
    positions = np.linspace(0, len(table) - 1, stops).round().astype(int)
    colours = [
        "#{:02x}{:02x}{:02x} {:g}%".format(
            *np.rint(table[p] * 255).astype(int), 100 * k / (stops - 1)
        )
        for k, p in enumerate(positions)
    ]
    return "linear-gradient(to right, " + ", ".join(colours) + ")"


def _gallery_controls(run: Any, threshold: float) -> str:
    methods = "".join(
        f'<option value="{k}">{_e(display_name(m))}</option>' for k, m in enumerate(run.methods)
    )
    metrics = "".join(
        f'<option value="{k}">{_e(display_name(m))} ({direction(m).word} is better)</option>'
        for k, m in enumerate(run.metrics)
    )
    legend = (
        f"Overlays: viridis colour map, shown where the map is at least {100 * threshold:g} % of "
        "its maximum (the tick on each colour bar); below that, the image itself. Maps are "
        "scaled per image (0 = its minimum, 1 = its maximum). Ground truth is outlined in green, "
        "just outside the region, so it hides no map pixel."
    )
    order = (
        '<label>Order <select id="order"><option value="worst">worst first</option>'
        '<option value="best">best first</option></select></label>'
        if run.metrics
        else ""
    )
    by_metric = f'<label>by <select id="metric">{metrics}</select></label>' if run.metrics else ""
    return (
        f'<p class="legend">{_e(legend)}</p>'
        '<div class="controls">'
        f'<label>Method <select id="method"><option value="-1">all methods</option>{methods}'
        f"</select></label> {order} {by_metric} "
        '<button id="prev" type="button">◀ previous</button> <span id="page-info"></span> '
        '<button id="next" type="button">next ▶</button></div>'
        f'<div id="colorbar-template" hidden data-threshold="{threshold!r}" '
        f'data-gradient="{_e(colorbar_css())}"></div>'
        "<noscript><p>The gallery needs JavaScript; the pictures are in the img/ folder.</p>"
        "</noscript>"
        '<div id="gallery"></div>'
    )


def _failures(run: Any, pictures: Any) -> str:
    rows = [*run.failures, *pictures.errors]
    if not rows:
        return "<p>None: every image of the run has its maps and scores.</p>"
    body = "".join(
        f"<tr><td>{_e(r.get('method', ''))}</td><td>{_e(r['image'])}</td>"
        f"<td>{_e(r['error'])}</td></tr>"
        for r in rows
    )
    return (
        f"<p>{len(rows)} failure(s) or skipped image(s).</p>"
        f'<table id="failures-table"><thead><tr><th>method</th><th>image</th><th>error</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _gallery_data(run: Any, pictures: Any, page_size: int) -> dict[str, Any]:
    def value(v: Any) -> float | None:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return None
        return float(f"{float(v):.6g}")

    images = []
    for entry in run.images:
        if entry.id not in pictures.image:
            continue
        maps = pictures.maps.get(entry.id, {})
        images.append(
            {
                "id": entry.id,
                "target": entry.target,
                "score": value(entry.score),
                "scoreKind": entry.score_kind,
                "volume": entry.id in pictures.volumes,
                "image": pictures.image[entry.id],
                "maps": [maps.get(m) for m in run.methods],
                "values": [
                    [value(entry.values.get(m, {}).get(k)) for k in run.metrics]
                    for m in run.methods
                ],
            }
        )
    return {
        "methods": run.methods,
        "methodNames": [display_name(m) for m in run.methods],
        "metrics": run.metrics,
        "metricNames": [display_name(m) for m in run.metrics],
        "higher": [direction(m).higher_is_better for m in run.metrics],
        "pageSize": page_size,
        "images": images,
    }


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1>
<nav>{nav}</nav></header>
<main>
{body}
</main>
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #1a1a1a; background: #fff; }
header { background: #22313f; color: #fff; padding: 12px 24px; }
header a { color: #cfe3ff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 19px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
main { padding: 0 24px 40px; max-width: 1400px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: left; vertical-align: top; }
#methods td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#methods thead th { cursor: pointer; background: #f1f4f7; }
#methods tbody.reference { color: #555; font-style: italic; }
td.best { background: #e3f4e1; font-weight: 600; }
.star { color: #1f7a1f; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 13px; padding: 4px 0; }
table.provenance th { background: #f6f6f6; white-space: nowrap; }
table.provenance td { font-family: ui-monospace, monospace; font-size: 13px;
  word-break: break-all; }
.notes { background: #fff4d6; border: 1px solid #e5c15c; padding: 8px 12px; margin: 16px 0; }
.controls { margin: 8px 0; display: flex; gap: 12px; flex-wrap: wrap; align-items: center; }
.distributions { display: flex; flex-wrap: wrap; gap: 16px; }
figure.dist { margin: 0; }
figure.dist figcaption { font-weight: 600; font-size: 14px; }
svg text { font-size: 12px; fill: #333; }
svg rect { fill: #3b6ea8; }
svg line.axis { stroke: #999; }
svg line.mean { stroke: #c0392b; stroke-width: 2; }
.legend { color: #444; font-size: 13px; max-width: 900px; }
#gallery { display: flex; flex-direction: column; gap: 14px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; }
.card h3 { margin: 0; font-size: 15px; }
.card .meta { color: #444; font-size: 13px; margin: 2px 0 6px; }
.panels { display: flex; flex-wrap: wrap; gap: 10px; }
.panel { margin: 0; display: flex; flex-direction: column; width: min-content; }
.panel img { display: block; min-width: 128px; max-width: 256px; image-rendering: pixelated;
  border: 1px solid #888; }
.panel figcaption { font-size: 12px; text-align: center; }
.cbar { position: relative; height: 10px; margin-top: 3px; border: 1px solid #888; }
.cbar .tick { position: absolute; top: -3px; width: 2px; height: 16px; background: #000; }
.cbar-labels { display: flex; justify-content: space-between; font-size: 10px; }
.code { font-size: 13px; white-space: nowrap; }
.code.planted { outline: 2px solid #1f7a1f; }
.code .bar { display: inline-block; height: 10px; vertical-align: middle; }
table.sortable thead th[data-col] { cursor: pointer; background: #f1f4f7; }
"""

SCRIPT = """
(function () {
  const D = JSON.parse(document.getElementById('report-data').textContent);
  const $ = (id) => document.getElementById(id);
  for (const sortable of document.querySelectorAll('table.sortable')) {
    for (const th of sortable.querySelectorAll('thead th[data-col]')) {
      th.addEventListener('click', () => {
        const body = sortable.tBodies[0], col = +th.dataset.col;
        const up = th.dataset.order !== 'asc';
        th.dataset.order = up ? 'asc' : 'desc';
        const key = (r) => { const v = r.cells[col].dataset.value, x = parseFloat(v);
          return isNaN(x) ? v : x; };
        [...body.rows].sort((a, b) => {
          const x = key(a), y = key(b);
          const c = (typeof x === 'number' && typeof y === 'number') ? x - y
            : String(x).localeCompare(String(y));
          return up ? c : -c;
        }).forEach((r) => body.appendChild(r));
      });
    }
  }
  const table = $('methods');
  if (table) {
    $('method-filter').addEventListener('input', (e) => {
      const q = e.target.value.toLowerCase();
      for (const r of table.querySelectorAll('tbody tr'))
        r.hidden = q !== '' && !r.dataset.method.toLowerCase().includes(q);
    });
    for (const box of document.querySelectorAll('input[data-metric-toggle]')) {
      box.addEventListener('change', () => {
        const sel = '[data-metric="' + box.dataset.metricToggle + '"]';
        for (const c of table.querySelectorAll(sel)) c.hidden = !box.checked;
      });
    }
  }
  const bar = $('colorbar-template');
  if (!bar) return;
  const state = { method: -1, metric: 0, worst: true, page: 0 };
  const fmt = (v) => (v === null || v === undefined) ? '–' : Number(v).toFixed(3);
  function key(img) {
    if (!D.metrics.length) return null;
    const ks = state.method < 0 ? D.methods.map((_, k) => k) : [state.method];
    const v = ks.map((k) => img.values[k][state.metric]).filter((x) => x !== null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  }
  function ordered() {
    const up = state.worst === D.higher[state.metric];
    const items = D.images.map((img) => [key(img), img]);
    items.sort((a, b) => {
      if (a[0] === null) return b[0] === null ? 0 : 1;
      if (b[0] === null) return -1;
      return up ? a[0] - b[0] : b[0] - a[0];
    });
    return items.map((x) => x[1]);
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function panel(p, caption, colorbar) {
    const f = el('figure', 'panel');
    const img = el('img');
    img.src = p.src; img.alt = caption; img.loading = 'lazy';
    if (p.full) { const a = el('a'); a.href = p.full; a.appendChild(img); f.appendChild(a); }
    else f.appendChild(img);
    f.appendChild(el('figcaption', '', caption));
    if (colorbar) {
      const c = el('div', 'cbar'); c.style.background = bar.dataset.gradient;
      const t = el('div', 'tick'); t.style.left = (100 * +bar.dataset.threshold) + '%';
      t.title = 'threshold'; c.appendChild(t); f.appendChild(c);
      const l = el('div', 'cbar-labels');
      l.appendChild(el('span', '', '0')); l.appendChild(el('span', '', '1')); f.appendChild(l);
    }
    return f;
  }
  function card(img) {
    const c = el('article', 'card');
    c.dataset.image = img.id;
    c.appendChild(el('h3', '', img.id));
    const score = img.score === null ? 'not recorded' : fmt(img.score);
    const kind = img.scoreKind ? ' (' + img.scoreKind + ')' : '';
    const meta = 'target: ' + img.target + ' · model score' + kind + ': ' + score;
    c.appendChild(el('p', 'meta', meta));
    const row = el('div', 'panels');
    for (const p of img.image) row.appendChild(panel(p, p.name, false));
    const ks = state.method < 0 ? D.methods.map((_, k) => k) : [state.method];
    for (const k of ks) {
      const ps = img.maps[k];
      if (!ps) continue;
      for (const p of ps) {
        let caption = D.methodNames[k] + (ps.length > 1 ? ' · ' + p.name : '');
        if (D.metrics.length)
          caption += ' · ' + D.metricNames[state.metric] + ' ' + fmt(img.values[k][state.metric]);
        row.appendChild(panel(p, caption, true));
      }
    }
    c.appendChild(row);
    return c;
  }
  function render() {
    const items = ordered(), size = D.pageSize;
    const pages = Math.max(1, Math.ceil(items.length / size));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    const g = $('gallery');
    g.replaceChildren(...items.slice(state.page * size, (state.page + 1) * size).map(card));
    $('page-info').textContent = 'page ' + (state.page + 1) + ' of ' + pages + ' (' +
      items.length + ' images)';
    $('prev').disabled = state.page === 0;
    $('next').disabled = state.page >= pages - 1;
  }
  $('method').addEventListener('change', (e) => { state.method = +e.target.value; render(); });
  if ($('metric')) $('metric').addEventListener('change', (e) => {
    state.metric = +e.target.value; state.page = 0; render(); });
  if ($('order')) $('order').addEventListener('change', (e) => {
    state.worst = e.target.value === 'worst'; state.page = 0; render(); });
  $('prev').addEventListener('click', () => { state.page -= 1; render(); });
  $('next').addEventListener('click', () => { state.page += 1; render(); });
  render();
})();
"""


def ehr_sections(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The EHR demo's sections: the planted code's rank, its distribution, the patients."""
    rank, chance = summary["planted_rank"], summary["chance"]
    planted = summary["planted_code"]["name"]
    rows = (
        f"<tr><th>mean rank</th><td>{rank['mean']:.2f}</td><td>{chance['mean_rank']:.2f}</td></tr>"
        f"<tr><th>fraction ranked #1</th><td>{rank['fraction_first']:.3f}</td>"
        f"<td>{chance['fraction_first']:.3f}</td></tr>"
    )
    codes = "".join(
        f"<li>{_e(c['name'])}: {c['mean']:+.3f} (n={c['patients']})</li>"
        for c in summary.get("highest_mean_condition_scores", [])
    )
    overview = (
        f"<p>Planted code <strong>{_e(planted)}</strong>: its rank among each explained "
        f"patient's known condition codes ({summary['n_explained']} patients, median "
        f"{summary['median_condition_codes']:g} codes each; rank 1 is the top code; lower is "
        "better), next to a random ordering of the same codes.</p>"
        f'<table id="planted"><thead><tr><th></th><th>Integrated Gradients</th>'
        f"<th>random order</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<p>Completeness: max |sum of attributions − (logit − baseline logit)| = "
        f"{summary['max_abs_delta']:.2e}.</p>"
        f"<p>Highest mean condition scores over these patients:</p><ul>{codes}</ul>"
    )
    ranks = np.array([p["planted_rank"] for p in summary["patients"]], dtype=np.float64)
    histogram = _histogram_svg(
        "planted_rank",
        {"Integrated Gradients": ranks},
        1.0,
        float(max(ranks.max(initial=1.0), 2.0)),
        caption="rank of the planted code per patient (lower is better)",
    )
    patients = []
    for p in summary["patients"]:
        top = p.get("top_conditions", [])
        largest = max((abs(score) for _, score in top), default=1.0) or 1.0
        bars = "".join(
            f'<div class="code{" planted" if name == planted else ""}"><span class="bar" '
            f'style="width:{60 * abs(score) / largest:.0f}px;background:'
            f'{"#3b6ea8" if score >= 0 else "#c0392b"}"></span> {_e(name)} {score:+.3f}</div>'
            for name, score in top
        )
        probability = p.get("probability")
        patients.append(
            f'<tr data-method="{_e(p["id"])}"><th data-value="{_e(p["id"])}">{_e(p["id"])}</th>'
            f'<td data-value="{p["planted_rank"]}">#{p["planted_rank"]} of '
            f"{p['known_condition_codes']}</td>"
            f'<td data-value="{probability if probability is not None else ""}">'
            f"{_number(probability)}</td><td>{bars}</td></tr>"
        )
    table = (
        "<p>Top condition codes per patient (Integrated Gradients score on the outcome logit; "
        "blue raises the risk, red lowers it; the planted code is framed). Click a column to "
        "sort: worst ranks first by clicking the rank twice.</p>"
        '<table id="patients" class="sortable"><thead><tr><th data-col="0">patient</th>'
        '<th data-col="1">planted code rank</th><th data-col="2">model probability</th>'
        f"<th>top condition codes</th></tr></thead><tbody>{''.join(patients)}</tbody></table>"
    )
    return [
        ("Planted code", overview, "planted-code"),
        ("Distributions", '<div class="distributions">' + histogram + "</div>", "distributions"),
        ("Patients", table, "patients-section"),
    ]
