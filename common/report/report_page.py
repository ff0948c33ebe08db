"""The HTML of the report's pages, from their data (``common.report.report`` builds and saves them).

Page 1 (report.html) holds the summary over every field; every page its fields, previous / next
links and a "jump to field" box, and loads ``report/index.js`` (``common.report.pages``) for the jump
and the class filter over all pages. No network: inline CSS and script
(``common.report.report_script``, no library), inline SVG charts, the page's data as one JSON block;
pictures are relative URLs under the report folder. Each field is a ``<canvas class="pic">`` (the
page composes the stains shown from the field's channel picture) under an SVG of its cells, one
``<path class="cell c{top class}" data-k data-image data-cell>`` each, and its scale bar when the
pixel size is known. Data reach the page as escaped HTML or JSON, and its script writes text with
``textContent`` only. ``CLASS_COLOURS`` gives each class its one colour.
"""
from __future__ import annotations

import html
import json
import math
from urllib.parse import quote

import numpy as np

from common.constants import CHANNELS, CLASS_NAMES, FALSE_COLOUR, GREEN, NUM_CLASSES, STAINS
from common.report import report_script
from common.report.pages import HIST_BINS, INDEX_FILE, page_html

# One colour per class, in class order: the first 19 of Glasbey et al.'s maximally distinct colours
# for dark backgrounds, as published in colorcet 3.2.1 (glasbey_light = glasbey_bw_minc_20_minl_30,
# https://colorcet.holoviz.org, CC-BY 4.0).
CLASS_COLOURS = ("#d70000", "#028800", "#b600ff", "#06acc6", "#98ff00", "#ffa530", "#ff8fc8",
                 "#79525f", "#00fecf", "#b0a5ff", "#94ad84", "#9a6900", "#376a62", "#d3008c",
                 "#fef590", "#c86f66", "#9ee3ff", "#00c946", "#a977ad")
CROP_MARGIN = 4                # thumbnail pixels around a cell in the gallery's crops
BAR_FRACTION = 0.2             # scale bar: the round length (1, 2, 5 x 10^n um) up to this part of the width


def page(view: dict, columns) -> str:
    """One page of the report (``report.write_pages``: the page's fields and cells, ``summary`` on page 1,
    S6's ``truth``); ``columns``: the header of its "Download these cells" CSV (cells.csv's)."""
    e, base = html.escape, view["base"]
    title, cells, truth = view["title"] or "report", view["cells"], view["truth"]
    extra = truth["fields"] if truth is not None else []  # fields of other pages in the gallery
    fields = [{"id": f["id"], "w": f["w"], "h": f["h"], "tw": f["tw"], "th": f["th"], "n": f["n"],
               "tiles": f["tiles"], "src": f"{base}{quote(f['src'])}"} for f in view["fields"] + extra]
    data = {"k": NUM_CLASSES, "names": list(CLASS_NAMES), "colours": list(CLASS_COLOURS),
            "columns": list(columns), "fields": fields, "tints": _tints(), "page": view["page"],
            "first": view["first"], "n": len(view["fields"]), "base": base, "home": view["home"],
            "field": [f - view["first"] for f in cells["field"]],
            **{key: cells[key] for key in ("id", "x", "y", "area", "border", "top", "p")}}
    if truth is not None:
        data.update(truth=truth["cells"], iou=truth["iou"])
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    top = _summary(view) if view["summary"] is not None else \
        f"<p><a id='home' href='{view['home']}'>summary (every field)</a></p>"
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>{e(title)}</title><style>{report_script.CSS}{_class_css()}</style></head><body>",
             f"<h1>{e(title)}</h1>", top, _truth_section(truth),
             _controls(view), "<div id='matches'></div><div id='info'>click or hover a cell</div>",
             "<div id='tip' hidden></div><h2>Fields</h2><div class='fields'>", *_fields(view), "</div>",
             "<dialog id='zoom'><div class='zoom-head'><span id='zoom-title'></span> <button type='button' "
             "id='zoom-close'>close</button></div><div id='zoom-view'></div></dialog>",
             f"<script type='application/json' id='report-data'>{blob}</script>",
             f"<script src='{base}{quote(INDEX_FILE)}'></script>",
             f"<script>{report_script.JS}</script></body></html>\n"]
    return "".join(parts)


def _page_url(view: dict, q: int) -> str:
    """From this page, the URL of page ``q`` (0: report.html)."""
    return view["home"] if q == 0 else view["base"] + quote(page_html(q))


def _tints() -> list[list[int]]:
    """Each channel's display colour at full signal (``constants.FALSE_COLOUR``), 0..255."""
    return [[round(255 * v) for v in rgb] for rgb in FALSE_COLOUR]


def _css_rgb(rgb) -> str:
    return "rgb({},{},{})".format(*rgb)


def _class_css() -> str:
    return "".join(f".c{j}{{stroke:{c}}}" for j, c in enumerate(CLASS_COLOURS))


def _summary(view: dict) -> str:
    """Page 1's summary over every field: counts, the failures, cells per top class, the histogram."""
    summary, fails = view["summary"], view["failures"]
    items = "".join(f"<li><b>{html.escape(i)}</b>: {html.escape(r)}</li>" for i, r in fails)
    failed = (f"<details id='failures'><summary>the failed fields and why</summary><ul>{items}</ul>"
              "</details>") if fails else ""
    return ("<h2>Summary</h2><p id='counts'><span id='n-fields'>" + str(summary["n_fields"]) +
            "</span> fields, <span id='n-cells'>" + str(summary["n_cells"]) + "</span> cells, <span "
            "id='n-failures'>" + str(len(fails)) + "</span> failures</p>" + failed + "<div class='charts'>"
            + _class_bars(np.asarray(summary["counts"])) + _histogram(np.asarray(summary["hist"])) + "</div>")


def _class_bars(counts: np.ndarray) -> str:
    """Horizontal bars: cells per top class."""
    row, left, width = 16, 250, 240
    scale = width / max(int(counts.max()), 1)
    out = [f"<figure><figcaption>cells per top class</figcaption><svg id='class-bars' "
           f"width='{left + width + 60}' height='{row * NUM_CLASSES}'>"]
    for j, n in enumerate(counts.tolist()):
        y = j * row
        out.append(f"<text x='{left - 4}' y='{y + 12}' text-anchor='end'>{html.escape(CLASS_NAMES[j])}"
                   f"</text><rect x='{left}' y='{y + 2}' width='{n * scale:.1f}' height='{row - 4}' "
                   f"fill='{CLASS_COLOURS[j]}' stroke='#555' stroke-width='.5'/>"
                   f"<text x='{left + n * scale + 4:.1f}' y='{y + 12}'>{n}</text>")
    return "".join(out) + "</svg></figure>"


def _histogram(counts: np.ndarray) -> str:
    """Vertical bars: the distribution of the top class's probability (``counts``: HIST_BINS bins)."""
    w, h, bw = 400, 140, 400 / HIST_BINS
    scale = (h - 20) / max(int(counts.max()), 1)
    out = [f"<figure><figcaption>confidence (top_prob) of the cells</figcaption>"
           f"<svg id='confidence' width='{w}' height='{h + 16}'>"]
    for i, n in enumerate(counts.tolist()):
        out.append(f"<rect x='{i * bw:.1f}' y='{h - n * scale:.1f}' width='{bw - 1:.1f}' "
                   f"height='{n * scale:.1f}' fill='#4d7aff'><title>{i / HIST_BINS:.2f}-"
                   f"{(i + 1) / HIST_BINS:.2f}: {n}</title></rect>")
    out.append(f"<text x='0' y='{h + 13}'>0</text><text x='{w / 2}' y='{h + 13}' text-anchor='middle'>"
               f"0.5</text><text x='{w}' y='{h + 13}' text-anchor='end'>1</text>")
    return "".join(out) + "</svg></figure>"


def _nav(view: dict) -> str:
    """Previous / next page, where this page lies (the script adds "of N"), the jump box."""
    p = view["page"]
    prev = f"<a id='prev' rel='prev' href='{_page_url(view, p - 1)}'>&larr; previous</a> " if p else ""
    after = f" <a id='next' rel='next' href='{_page_url(view, p + 1)}'>next &rarr;</a>" if view["has_next"] \
        else ""
    return (f"<div id='nav'>{prev}<span id='page-of'>page {p + 1}</span>{after} <label>jump to field "
            "<input id='jump' size='18' placeholder='field ID'></label><button type='button' id='jump-go'>"
            "go</button> <span id='jump-msg'></span></div>")


def _controls(view: dict) -> str:
    """The pages, the class filter, the download, the stain legend with its toggles, the class colours."""
    threshold = view["threshold"]
    options = "".join(f"<option value='{j}'>{html.escape(n)}</option>" for j, n in enumerate(CLASS_NAMES))
    legend = "".join(f"<span class='sw' style='background:{c}'></span>{html.escape(CLASS_NAMES[j])} "
                     for j, c in enumerate(CLASS_COLOURS))
    return (f"<div id='controls'>{_nav(view)}<div><label>class <select id='cls'><option value=''>all "
            f"cells</option>{options}</select></label><label><input type='radio' name='mode' id='mode-top' "
            "checked>top class</label><label><input type='radio' name='mode' id='mode-p'>probability &gt; "
            f"<input type='range' id='thr' min='0' max='1' step='0.01' value='{threshold}'> "
            "<output id='thr-v'></output></label> <span id='shown'></span> cells shown "
            "<button type='button' id='download'>Download these cells (CSV)</button></div>"
            f"{_stains()}<details><summary>class colours</summary>{legend}</details></div>")


def _stains() -> str:
    """The stain legend: each channel's false colour and stain, a toggle each; the protein alone."""
    boxes = "".join(
        f"<label data-channel='{ch}'><input type='checkbox' id='ch-{c}' checked><span class='sw' "
        f"style='background:{_css_rgb(rgb)}'></span>{html.escape(STAINS[c])} ({ch})</label>"
        for c, (ch, rgb) in enumerate(zip(CHANNELS, _tints())))
    return (f"<div id='stains'>stains: {boxes}<button type='button' id='protein-alone' "
            f"data-channel='{GREEN}'>{html.escape(STAINS[GREEN])} alone</button> <button type='button' "
            "id='all-stains'>all stains</button> <label><input type='checkbox' id='grey' checked>one stain "
            "in grey</label></div>")


def _fields(view: dict) -> list[str]:
    """One figure per field of the page (id ``f-{index among all fields}``, ``data-f`` its place in the
    page's data): its canvas, its cells' outlines and its scale bar."""
    cells, e, first = view["cells"], html.escape, view["first"]
    by_field: list[list[int]] = [[] for _ in view["fields"]]
    for k, f in enumerate(cells["field"]):
        by_field[f - first].append(k)
    out = []
    for i, (f, ks) in enumerate(zip(view["fields"], by_field)):
        fid = e(f["id"])
        paths = "".join(f"<path class='cell c{cells['top'][k]}' data-k='{k}' data-image='{fid}' "
                        f"data-cell='{cells['id'][k]}' d='{cells['shape'][k]}'/>" for k in ks)
        out.append(f"<figure class='field' id='f-{first + i}' data-f='{i}'><figcaption>{fid} · "
                   f"{f['w']}&times;{f['h']} · {len(ks)} cells <button type='button' class='zoom' "
                   f"data-f='{i}'>larger view</button></figcaption><div class='fv' "
                   f"style='aspect-ratio:{f['tw']}/{f['th']}'>"
                   f"{_canvas(i, f['tw'], f['th'])}"
                   f"<svg viewBox='0 0 {f['tw']} {f['th']}' preserveAspectRatio='none'>"
                   f"<g transform='translate(.5 .5)'>{paths}</g>{_scale_bar(f, view['pixel_size'])}</svg>"
                   "</div></figure>")
    return out


def _canvas(field: int, w: int, h: int, view: str = "") -> str:
    """Where the script paints a field's picture (``view``: the part shown, "x y w h" in thumbnail
    pixels; all of it when ''), ``w x h`` pixels once near the view (0 x 0 until then)."""
    vb = f" data-vb='{view}'" if view else ""
    return f"<canvas class='pic' width='0' height='0' data-f='{field}' data-w='{w}' data-h='{h}'{vb}>" \
           "</canvas>"


def _scale_bar(f: dict, pixel_size: float) -> str:
    """A scale bar at the bottom right of a field (thumbnail pixels): the round length (1, 2 or 5 x
    10^n um) closest below ``BAR_FRACTION`` of its width; '' when the pixel size is unknown (0)."""
    if not pixel_size > 0:
        return ""
    um_per_px = pixel_size * f["w"] / f["tw"]
    target = BAR_FRACTION * f["tw"] * um_per_px
    power = 10.0 ** math.floor(math.log10(target))
    um = next(m * power for m in (5, 2, 1) if m * power <= target)
    px, side = um / um_per_px, max(f["tw"], f["th"])
    x1, y1, thick = f["tw"] - side / 25, f["th"] - side / 25, max(side / 100, 1.5)
    return (f"<g class='bar' data-um='{um:g}' data-px='{px:.3f}'><rect x='{x1 - px:.2f}' "
            f"y='{y1 - thick:.2f}' width='{px:.2f}' height='{thick:.2f}'/><text x='{x1 - px / 2:.2f}' "
            f"y='{y1 - 2 * thick:.2f}' font-size='{side / 22:.1f}'>{um:g} µm</text></g>")


def _truth_section(truth: dict | None) -> str:
    """S6's per-class AP table and gallery of the most confident mistakes (page 1; '' elsewhere)."""
    if truth is None or "table" not in truth:  # only S6 adds it, the table to page 1
        return ""
    rows = "".join(f"<tr><td>{c}</td><td>{html.escape(n)}</td><td class='n'>{g}</td>"
                   f"<td class='n'>{_ap(s)}</td><td class='n'>{_ap(le)}</td></tr>"
                   for c, n, g, s, le in truth["table"])
    table = (f"<h2>Per-class AP (IoU &ge; {truth['iou']})</h2><p id='map'>mAP strict "
             f"{_ap(truth['mAP']['strict'])}, lenient {_ap(truth['mAP']['lenient'])}</p>"
             "<table class='ap' id='ap-table'><tr><th>class</th><th>name</th><th>n_gt</th>"
             f"<th>AP strict</th><th>AP lenient</th></tr>{rows}</table>")
    gallery = ["<h2>Most confident mistakes</h2><p>per class X: the cells with the highest "
               "probability for X whose matched true cell lacks X (or that match no true cell)</p>"
               "<div class='gallery' id='gallery'>"]
    for c, crops in truth["gallery"]:
        gallery.append(f"<h3>{html.escape(CLASS_NAMES[c])}</h3><div data-class='{c}'>"
                       f"{''.join(_crop(crop, c) for crop in crops)}</div>")
    return table + "".join(gallery) + "</div>"


def _ap(x) -> str:
    return "-" if x is None or x != x else f"{x:.4f}"


def _crop(crop: dict, c: int) -> str:
    """A cell cut out of its field's canvas by a view box (no new picture), its outline, p and truth
    (``crop``: the field's place in the page's data, its ID, the cell's id, box, outline, p, truth)."""
    e = html.escape
    x0, y0, x1, y1 = crop["box"]
    side = max(x1 - x0, y1 - y0) + 2 * CROP_MARGIN
    vx, vy = (x0 + x1 - side) / 2, (y0 + y1 - side) / 2
    t = crop["truth"]
    said = ", ".join(CLASS_NAMES[j] for j in t) if t else "no true cell"
    return (f"<figure class='crop' data-image='{e(crop['image'])}' data-cell='{crop['cell']}'>"
            f"<div class='cv'>{_canvas(crop['f'], side, side, f'{vx:.1f} {vy:.1f} {side} {side}')}"
            f"<svg viewBox='{vx:.1f} {vy:.1f} {side} {side}'><path class='c{c}' "
            f"transform='translate(.5 .5)' d='{crop['shape']}'/></svg></div><figcaption>{e(crop['image'])} "
            f"cell {crop['cell']}<br>p={crop['p']:.4f}<br>truth: {e(said)}</figcaption></figure>")
