"""The HTML of report.html, from the report's data (``common.report`` builds and saves it).

One page, no network: inline CSS, inline SVG charts, a small inline script (no library), the data as
one JSON block; pictures are relative URLs under the report folder (``<img loading="lazy">``).
Every cell is one ``<path class="cell c{top class}" data-k data-image data-cell>`` over its
thumbnail (a viewBox in thumbnail pixels); ``CLASS_COLOURS`` gives each class its one colour.
"""
from __future__ import annotations

import html
import json
from urllib.parse import quote

import numpy as np

from common.constants import CLASS_NAMES, NUM_CLASSES

CLASS_COLOURS = ("#ff4d4d", "#ffa64d", "#ffe04d", "#b3ff4d", "#4dff88", "#4dffe0", "#4dc3ff",
                 "#4d7aff", "#a64dff", "#ff4dd2", "#ff8c8c", "#d9b38c", "#c0c0c0", "#8cffc6",
                 "#8cb3ff", "#e6a1ff", "#ffd9a1", "#00b3a1", "#ffffff")  # one per class, in class order
HIST_BINS = 20                 # bins of the confidence histogram
CROP_MARGIN = 4                # thumbnail pixels around a cell in the gallery's crops

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1em 4em;background:#fafafa;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.charts{display:flex;flex-wrap:wrap;gap:2em}.charts svg text{font-size:11px}
#controls{position:sticky;top:0;z-index:2;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ccc}
#controls label{margin-right:1em}
#info{position:fixed;right:1em;bottom:1em;z-index:3;background:#fff;border:1px solid #999;
 padding:.5em 1em;min-width:16em;box-shadow:0 2px 6px #0003}
#info ol{margin:.2em 0;padding-left:1.4em}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border:1px solid #555}
.fields{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}
.field{margin:0;content-visibility:auto;contain-intrinsic-size:auto 380px}
.fv{position:relative;line-height:0}.fv img{width:100%;height:auto;background:#000}
.fv svg{position:absolute;left:0;top:0;width:100%;height:100%}
path.cell{fill:#0000;stroke-width:1.5;vector-effect:non-scaling-stroke;pointer-events:all;cursor:pointer}
path.cell.off{display:none}path.cell.sel{stroke-width:3;fill:#fff3}
.crop path{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}
.gallery figure{display:inline-block;margin:0 .5em .5em 0;width:120px;font-size:11px;vertical-align:top}
.gallery svg{width:120px;height:120px;background:#000}
table.ap{border-collapse:collapse}table.ap td,table.ap th{padding:.1em .6em;border-bottom:1px solid #ddd}
table.ap td.n{text-align:right}
"""

_JS = """
(function(){
const D=JSON.parse(document.getElementById('report-data').textContent),K=D.k;
const els=Array.from(document.querySelectorAll('path.cell'));
const sel=document.getElementById('cls'),thr=document.getElementById('thr'),
 byTop=document.getElementById('mode-top'),thrV=document.getElementById('thr-v'),
 shown=document.getElementById('shown');
function apply(){
 const c=sel.value===''?-1:+sel.value,t=+thr.value,top=byTop.checked;let n=0;
 thrV.textContent=t.toFixed(2);
 for(const el of els){const k=+el.dataset.k;
  const on=c<0||(top?D.top[k]===c:D.p[k*K+c]>t);el.classList.toggle('off',!on);if(on)n++;}
 shown.textContent=n;
}
function sw(j){return '<span class="sw" style="background:'+D.colours[j]+'"></span>';}
let last=null;
function info(el){
 const k=+el.dataset.k,ps=[];for(let j=0;j<K;j++)ps.push([D.p[k*K+j],j]);
 ps.sort((a,b)=>b[0]-a[0]);
 let h='<b>'+el.dataset.image+'</b> cell '+el.dataset.cell+'<ol id="top3">';
 for(const [p,j] of ps.slice(0,3))h+='<li data-class="'+D.names[j]+'" data-p="'+p.toFixed(4)+'">'+
  sw(j)+D.names[j]+' '+p.toFixed(4)+'</li>';
 h+='</ol>';
 if(D.truth){const t=D.truth[k];h+='<div id="truth">truth: '+(t===null?'unknown':t.length?
  t.map(j=>D.names[j]).join(', '):'no true cell at IoU &ge; '+D.iou)+'</div>';}
 document.getElementById('info').innerHTML=h;
 if(last)last.classList.remove('sel');el.classList.add('sel');last=el;
}
document.addEventListener('click',e=>{const el=e.target.closest('path.cell');if(el)info(el);});
document.addEventListener('mouseover',e=>{const el=e.target.closest('path.cell');if(el)info(el);});
for(const x of [sel,thr,byTop,document.getElementById('mode-p')])
 for(const ev of ['input','change'])x.addEventListener(ev,apply);
apply();
})();
"""


def page(model: dict, report_dir: str) -> str:
    """The whole page."""
    e = html.escape
    title = model["title"] or "report"
    cells = model["cells"]
    data = {"k": NUM_CLASSES, "names": list(CLASS_NAMES), "colours": list(CLASS_COLOURS),
            "top": cells["top"], "p": cells["p"]}
    truth = model.get("truth")  # optional: only S6 --REPORT adds it
    if truth is not None:
        data.update(truth=truth["cells"], iou=truth["iou"])
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>{e(title)}</title><style>{_CSS}{_class_css()}</style></head><body>",
             f"<h1>{e(title)}</h1>", _summary(model), _truth_section(model, report_dir),
             _controls(model["threshold"]), "<div id='info'>click or hover a cell</div>",
             "<h2>Fields</h2><div class='fields'>", *_fields(model, report_dir), "</div>",
             f"<script type='application/json' id='report-data'>{blob}</script>",
             f"<script>{_JS}</script></body></html>\n"]
    return "".join(parts)


def _class_css() -> str:
    return "".join(f".c{j}{{stroke:{c}}}" for j, c in enumerate(CLASS_COLOURS))


def _summary(model: dict) -> str:
    cells, fails = model["cells"], model["failures"]
    top = np.asarray(cells["top"], np.int64)
    p = np.asarray(cells["p"], np.float64).reshape(-1, NUM_CLASSES)
    top_p = p[np.arange(len(top)), top] if len(top) else np.zeros(0)
    items = "".join(f"<li><b>{html.escape(i)}</b>: {html.escape(r)}</li>" for i, r in fails)
    failed = (f"<details id='failures'><summary>{len(fails)} failure(s)</summary><ul>{items}</ul>"
              "</details>") if fails else "<p id='failures'>no failures</p>"
    return ("<h2>Summary</h2><p id='counts'><span id='n-fields'>" + str(len(model["fields"])) +
            "</span> fields, <span id='n-cells'>" + str(len(top)) + "</span> cells, <span id='n-failures'>"
            + str(len(fails)) + "</span> failures</p>" + failed + "<div class='charts'>"
            + _class_bars(np.bincount(top, minlength=NUM_CLASSES)) + _histogram(top_p) + "</div>")


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


def _histogram(top_p: np.ndarray) -> str:
    """Vertical bars: the distribution of the top class's probability."""
    counts, _ = np.histogram(top_p, bins=HIST_BINS, range=(0.0, 1.0))
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


def _controls(threshold: float) -> str:
    options = "".join(f"<option value='{j}'>{html.escape(n)}</option>" for j, n in enumerate(CLASS_NAMES))
    legend = "".join(f"<span class='sw' style='background:{c}'></span>{html.escape(CLASS_NAMES[j])} "
                     for j, c in enumerate(CLASS_COLOURS))
    return ("<div id='controls'><label>class <select id='cls'><option value=''>all cells</option>"
            f"{options}</select></label><label><input type='radio' name='mode' id='mode-top' checked>"
            "top class</label><label><input type='radio' name='mode' id='mode-p'>probability &gt; "
            f"<input type='range' id='thr' min='0' max='1' step='0.01' value='{threshold}'> "
            "<output id='thr-v'></output></label> <span id='shown'></span> cells shown"
            f"<details><summary>colours</summary>{legend}</details></div>")


def _fields(model: dict, report_dir: str) -> list[str]:
    """One figure per field: the thumbnail and its cells' outlines."""
    cells, e = model["cells"], html.escape
    by_field: list[list[int]] = [[] for _ in model["fields"]]
    for k, f in enumerate(cells["field"]):
        by_field[f].append(k)
    out = []
    for f, ks in zip(model["fields"], by_field):
        fid = e(f["id"])
        paths = "".join(f"<path class='cell c{cells['top'][k]}' data-k='{k}' data-image='{fid}' "
                        f"data-cell='{cells['id'][k]}' d='{cells['shape'][k]}'/>" for k in ks)
        out.append(f"<figure class='field' id='f-{fid}'><figcaption>{fid} · {f['w']}&times;{f['h']} · "
                   f"{len(ks)} cells</figcaption><div class='fv'><img loading='lazy' alt='{fid}' "
                   f"src='{report_dir}/{e(quote(f['src']))}' width='{f['tw']}' height='{f['th']}'>"
                   f"<svg viewBox='0 0 {f['tw']} {f['th']}' preserveAspectRatio='none'>"
                   f"<g transform='translate(.5 .5)'>{paths}</g></svg></div></figure>")
    return out


def _truth_section(model: dict, report_dir: str) -> str:
    """S6's per-class AP table and gallery of the most confident mistakes ('' without truth)."""
    truth = model.get("truth")  # optional: only S6 --REPORT adds it
    if truth is None:
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
    for c, ks in truth["gallery"]:
        crops = "".join(_crop(model, k, c, report_dir) for k in ks)
        gallery.append(f"<h3>{html.escape(CLASS_NAMES[c])}</h3><div data-class='{c}'>{crops}</div>")
    return table + "".join(gallery) + "</div>"


def _ap(x) -> str:
    return "-" if x is None or x != x else f"{x:.4f}"


def _crop(model: dict, k: int, c: int, report_dir: str) -> str:
    """A cell cut out of its thumbnail by a viewBox (no new picture), its outline, p and truth."""
    cells, e = model["cells"], html.escape
    f = model["fields"][cells["field"][k]]
    x0, y0, x1, y1 = cells["box"][k]
    side = max(x1 - x0, y1 - y0) + 2 * CROP_MARGIN
    vx, vy = (x0 + x1 - side) / 2, (y0 + y1 - side) / 2
    t = model["truth"]["cells"][k]
    said = ", ".join(CLASS_NAMES[j] for j in t) if t else "no true cell"
    return (f"<figure class='crop' data-image='{e(f['id'])}' data-cell='{cells['id'][k]}'>"
            f"<svg viewBox='{vx:.1f} {vy:.1f} {side} {side}'><image href='{report_dir}/"
            f"{e(quote(f['src']))}' width='{f['tw']}' height='{f['th']}'/><path class='c{c}' "
            f"transform='translate(.5 .5)' d='{cells['shape'][k]}'/></svg><figcaption>{e(f['id'])} "
            f"cell {cells['id'][k]}<br>p={cells['p'][k * NUM_CLASSES + c]:.4f}<br>truth: {e(said)}"
            "</figcaption></figure>")
