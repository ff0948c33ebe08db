"""report.html in headless Chromium: offline, every cell drawn, top three on click, the class filter,
the stain legend and toggles (pixels checked on screenshots), the scale bar, a field's larger view with
its cell ids, the class name on hover, "Download these cells", markup in IDs shown as text, and
S6 --REPORT's truth section. One browser for the module (Debian's chromium + chromedriver; skipped
without them unless CI is set)."""
from __future__ import annotations

import html
import itertools
import json
import os
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from common import constants, fov, plots
from common.competition import encoding
from common.predict import cell_tables, merge, parts
from common.report import report, report_page

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCALE = 4  # original pixels per thumbnail pixel
FIELDS = {"sq1": (64, 64), "sq2": (64, 64), "wide": (48, 80)}  # thumbnail (h, w); "wide" is not square
DISCS = [(14, 14, 8), (40, 16, 9), (20, 40, 7), (44, 40, 10)]  # (x, y, r) in thumbnail pixels
# Each channel lights one half of a field, so each quadrant holds a known mix: red left, green (the
# protein) top, blue right, yellow bottom.
LEVELS = (200, 160, 120, 100)  # red, green, blue, yellow
QUADRANTS = {"TL": (0.25, 0.25), "TR": (0.75, 0.25), "BL": (0.25, 0.75), "BR": (0.75, 0.75)}  # (x, y)
MARKUP = "<img src=x onerror=alert(7)>"


def _discs(h: int, w: int, scale: int) -> np.ndarray:
    lab = np.zeros((h * scale, w * scale), np.uint16)
    for c, (x, y, r) in enumerate(DISCS, 1):
        cv2.circle(lab, (x * scale, y * scale), r * scale, c, -1)
    return lab


def _channels(h: int, w: int) -> np.ndarray:
    """h x w x 4 RGBY: red on the left half, green on the top, blue on the right, yellow at the bottom."""
    rgby = np.zeros((h, w, 4), np.uint8)
    rgby[:, : w // 2, 0], rgby[: h // 2, :, 1] = LEVELS[0], LEVELS[1]
    rgby[:, w // 2:, 2], rgby[h // 2:, :, 3] = LEVELS[2], LEVELS[3]
    return rgby


def _quadrant(rgby_on: list[bool], grey: bool = False) -> dict:
    """The RGB each quadrant should show with the channels ``rgby_on`` (false colour, or white when one
    channel is shown in grey)."""
    out = {}
    for q, (fx, fy) in QUADRANTS.items():
        px = _channels(8, 8)[int(fy * 8), int(fx * 8)] * np.array(rgby_on, np.uint8)
        if grey and sum(rgby_on) == 1:
            out[q] = np.full(3, int(px.max()))
        else:
            out[q] = plots.false_colour(px[None, None])[0, 0].astype(int)
    return out


def _cells_rows(rng) -> list[dict]:
    rows = []
    for image_id in FIELDS:
        for c, (x, y, r) in enumerate(DISCS, 1):
            p = cell_tables.as_written(rng.random(constants.NUM_CLASSES))[0]  # 6 decimals, as S5 writes
            rows.append({"image": image_id, "cell_id": c, "x": x * SCALE, "y": y * SCALE,
                         "area": int(np.pi * (r * SCALE) ** 2), "touches_border": 0,
                         "top_class": constants.CLASS_NAMES[int(p.argmax())], "top_prob": p.max(),
                         **dict(zip(constants.CLASS_NAMES, p))})
    return rows


def _fields(ids=FIELDS) -> list:
    out = []
    for image_id, (h, w) in zip(ids, FIELDS.values()):
        rgby = _channels(h, w)
        thumb = report.encode_channels(rgby) if image_id == "sq2" else rgby  # S5 hands them encoded
        out.append(report.ReportField(image_id, thumb, _discs(h, w, 1), (h * SCALE, w * SCALE)))
    return out


def _build(folder: Path, **kw) -> pd.DataFrame:
    """Write the report of the synthetic fields (+ S5's labels/ and cells.csv); the cells as read back."""
    cells = pd.DataFrame(_cells_rows(np.random.default_rng(3)))
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for image_id, (h, w) in FIELDS.items():
        cv2.imwrite(str(folder / "labels" / f"{image_id}.png"), _discs(h, w, SCALE))
    cells.to_csv(folder / "cells.csv", index=False)
    report.write_report(folder, _fields(), cells, [{"ID": "broken1", "reason": "unreadable PNG"}],
                        threshold=0.5, title="test report", **kw)
    return pd.read_csv(folder / "cells.csv", dtype={"image": str})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return folder, _build(folder)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("CI: /usr/bin/chromium and /usr/bin/chromedriver are needed (apt-get install "
                        "chromium chromium-driver)")
        pytest.skip("no /usr/bin/chromium + /usr/bin/chromedriver")
    tool = load_script("tools/report_screenshot.py", "report_screenshot")
    driver = tool.open_browser(str(CHROMIUM), str(CHROMEDRIVER), 1200, 900)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> list:
    """Load the page; return its console entries (the log is emptied by reading it)."""
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(page.as_uri())
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy pictures load
    driver.execute_script("window.scrollTo(0, 0)")
    return driver.get_log("browser")


def _visible(driver) -> set:
    pairs = driver.execute_script("return Array.from(document.querySelectorAll('path.cell:not(.off)'))"
                                  ".map(e => [e.dataset.image, +e.dataset.cell])")
    return {tuple(p) for p in pairs}


def test_page_is_offline_and_loads_without_errors(built, browser):
    folder, _ = built
    page = folder / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    console = _open(browser, page)
    assert not [e for e in console if e["level"] in ("SEVERE", "WARNING")], console
    base = folder.as_uri() + "/"
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    urls += [json.loads(e["message"])["message"]["params"]["request"]["url"]
             for e in browser.get_log("performance") if '"Network.requestWillBeSent"' in e["message"]]
    assert urls and all(u.startswith(base) for u in urls), urls
    pictures = {u for u in urls if "/report/" in u and u.endswith((".jpg", ".png"))}
    assert len(pictures) == len(FIELDS)  # every thumbnail, from the folder
    assert {u for u in urls if "/report/" in u} - pictures == {base + "report/index.js"}  # pages' index
    assert browser.find_element("id", "n-failures").text == "1"
    assert browser.find_element("css selector", "#failures li").get_attribute("textContent") == \
        "broken1: unreadable PNG"  # S5's dicts: the ID and the reason, not the keys


def test_every_cell_is_drawn_once(built, browser):
    folder, cells = built
    _open(browser, folder / "report.html")
    drawn = browser.find_elements("css selector", "path.cell")
    assert len(drawn) == len(cells)
    assert _visible(browser) == set(zip(cells["image"], cells["cell_id"]))
    assert browser.find_element("id", "n-cells").text == str(len(cells))


def test_click_shows_the_top_three_classes(built, browser):
    folder, cells = built
    _open(browser, folder / "report.html")
    for _, row in cells.iloc[[0, 5, len(cells) - 1]].iterrows():  # "wide" is last
        el = browser.find_element("css selector",
                                  f"path.cell[data-image='{row['image']}'][data-cell='{row['cell_id']}']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        el.click()
        shown = [(li.get_attribute("data-class"), li.get_attribute("data-p"))
                 for li in browser.find_elements("css selector", "#top3 li")]
        probs = row[list(constants.CLASS_NAMES)].astype(float).sort_values(ascending=False)[:3]
        assert shown == [(name, f"{p:.4f}") for name, p in probs.items()]
        assert shown[0][0] == row["top_class"]


def test_the_class_filter_hides_the_other_cells(built, browser):
    folder, cells = built
    _open(browser, folder / "report.html")
    j = constants.CLASS_NAMES.index(cells["top_class"].value_counts().index[0])
    name = constants.CLASS_NAMES[j]
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "cls")).select_by_value(str(j))
    expect = cells[cells["top_class"] == name]
    assert 0 < len(expect) < len(cells)
    assert _visible(browser) == set(zip(expect["image"], expect["cell_id"]))
    hidden = cells[cells["top_class"] != name].iloc[0]
    el = browser.find_element("css selector",
                              f"path.cell[data-image='{hidden['image']}'][data-cell='{hidden['cell_id']}']")
    assert not el.is_displayed()
    browser.find_element("id", "mode-p").click()
    for t in (0.3, 0.8):
        browser.execute_script("const s = document.getElementById('thr'); s.value = arguments[0];"
                               "s.dispatchEvent(new Event('input'));", t)
        expect = cells[cells[name] > t]
        assert _visible(browser) == set(zip(expect["image"], expect["cell_id"]))
    Select(browser.find_element("id", "cls")).select_by_value("")
    assert len(_visible(browser)) == len(cells)


def _truth_case(folder: Path, cells: pd.DataFrame) -> tuple[Path, Path]:
    """S5's outputs plus a submission and a per-cell truth (cell 1's truth lacks its top class)."""
    subs, truth = {}, []
    for image_id, (h, w) in FIELDS.items():
        masks = encoding.encode_label_map(_discs(h, w, SCALE))
        rows = cells[cells["image"] == image_id].sort_values("cell_id")
        probs = rows[list(constants.CLASS_NAMES)].to_numpy()
        subs[image_id] = encoding.prediction_string([masks[c] for c in rows["cell_id"]], probs)
        for c, top in zip(rows["cell_id"], probs.argmax(1)):
            label = (top + 1) % constants.NUM_CLASSES if c == 1 else top
            truth.append({"ID": image_id, "ImageWidth": w * SCALE, "ImageHeight": h * SCALE,
                          "cell_id": c, "Label": str(label), "EncodedMask": masks[c]})
    sample = pd.DataFrame([{"ID": i, "ImageWidth": w * SCALE, "ImageHeight": h * SCALE}
                           for i, (h, w) in FIELDS.items()])
    sub = encoding.write_submission(subs, sample, folder / "submission.csv")
    truth_csv = folder.parent / f"{folder.name}_truth.csv"
    pd.DataFrame(truth).to_csv(truth_csv, index=False)
    return sub, truth_csv


def s6_report(driver, folder: Path, cells: pd.DataFrame, capsys) -> None:
    """S6 --REPORT on S5's outputs in ``folder`` (+ _truth_case's); report.html opened, its AP table there."""
    sub, truth_csv = _truth_case(folder, cells)
    load_script("S6_evaluate.py", "S6_evaluate").main(
        ["--SUBMISSION", str(sub), "--TRUTH", str(truth_csv), "--REPORT", "true", "--PLOTS", "false"])
    assert "(with the truth)" in capsys.readouterr().out
    console = _open(driver, folder / "report.html")
    assert not [e for e in console if e["level"] == "SEVERE"], console
    assert len(driver.find_elements("css selector", "#ap-table tr")) == 1 + constants.NUM_CLASSES


def test_s6_report_adds_the_ap_table_and_the_gallery(built, browser, tmp_path, capsys):
    folder, cells = built
    out = tmp_path / "out"
    shutil.copytree(folder, out)
    s6_report(browser, out, cells, capsys)
    crops = browser.find_elements("css selector", "#gallery figure.crop")
    assert crops
    wrong = {(f.get_attribute("data-image"), int(f.get_attribute("data-cell"))) for f in crops}
    assert {(i, 1) for i in FIELDS} <= wrong  # the cells whose truth lacks their top class
    assert len(browser.find_elements("css selector", "path.cell")) == len(cells)
    el = browser.find_element("css selector", "path.cell[data-image='wide'][data-cell='2']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()
    assert browser.find_element("id", "truth").text.startswith("truth: ")


def test_screenshot_tool_writes_a_png_and_a_jpeg_of_the_protein_alone(built, browser, tmp_path):
    folder, _ = built
    tool = load_script("tools/report_screenshot.py", "report_screenshot")
    png, jpg = tmp_path / "shot.png", tmp_path / "protein.jpg"
    common = ["--REPORT_HTML", str(folder / "report.html"), "--WIDTH", "800", "--HEIGHT", "600"]
    tool.main([*common, "--OUT_IMAGE", str(png)])
    assert png.read_bytes().startswith(b"\x89PNG")
    tool.main([*common, "--OUT_IMAGE", str(jpg), "--PROTEIN_ALONE", "true", "--SCROLL_TO", ".fields"])
    shot = cv2.imread(str(jpg))
    assert shot is not None and shot.shape[1] == 800
    with pytest.raises(SystemExit, match="OUT_PNG was renamed"):
        tool.main([*common, "--OUT_PNG", str(png)])


# ----------------------------------------------------------------------------- for a cell biologist
def _shot(driver, selector: str) -> np.ndarray:
    """An element's pixels as shown (RGB), from a screenshot of it (a canvas of file:// pictures is
    tainted: the page itself never reads its pixels back)."""
    el = driver.find_element("css selector", selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    painted = "return arguments[0].querySelector('canvas.pic').dataset.painted === '1'"
    for _ in range(200):  # the picture loads, the canvas is painted
        if driver.execute_script(painted, el):
            break
        time.sleep(0.05)
    png = el.screenshot_as_png
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _quadrants_shown(driver, selector: str) -> dict:
    img = _shot(driver, selector)
    h, w = img.shape[:2]
    return {q: img[int(fy * h) - 2: int(fy * h) + 3, int(fx * w) - 2: int(fx * w) + 3].reshape(-1, 3)
            .mean(0) for q, (fx, fy) in QUADRANTS.items()}


def _assert_shows(driver, selector: str, expect: dict, tol: float = 14) -> None:
    shown = _quadrants_shown(driver, selector)
    for q in QUADRANTS:
        assert np.abs(shown[q] - expect[q]).max() <= tol, (q, shown[q], expect[q])


def test_the_stain_legend_names_each_false_colour(built, browser):
    folder, _ = built
    _open(browser, folder / "report.html")
    labels = browser.find_elements("css selector", "#stains label[data-channel]")
    assert [lab.get_attribute("data-channel") for lab in labels] == list(constants.CHANNELS)
    for lab, channel, stain, rgb in zip(labels, constants.CHANNELS, constants.STAINS, constants.FALSE_COLOUR):
        assert lab.text == f"{stain} ({channel})"
        colour = lab.find_element("css selector", ".sw").value_of_css_property("background-color")
        assert colour == "rgba({}, {}, {}, 1)".format(*(round(255 * v) for v in rgb))
        assert lab.find_element("css selector", "input").is_selected()


def test_channel_toggles_and_the_protein_alone_change_the_pixels(built, browser):
    folder, _ = built
    _open(browser, folder / "report.html")
    for field in ("#f-0 .fv", "#f-1 .fv"):  # channels given as an array, and as S5's encoded picture
        _assert_shows(browser, field, _quadrant([True] * 4))  # the false colour of plots.false_colour
    browser.find_element("id", "ch-0").click()  # microtubules (red) off
    _assert_shows(browser, "#f-0 .fv", _quadrant([False, True, True, True]))
    browser.find_element("id", "protein-alone").click()  # one click: the protein alone, in grey
    shown = [browser.find_element("id", f"ch-{c}").is_selected() for c in range(4)]
    assert shown == [False, True, False, False]
    _assert_shows(browser, "#f-0 .fv", _quadrant([False, True, False, False], grey=True))
    browser.find_element("id", "grey").click()  # the protein alone in green
    _assert_shows(browser, "#f-2 .fv", _quadrant([False, True, False, False]))
    browser.find_element("id", "all-stains").click()
    _assert_shows(browser, "#f-0 .fv", _quadrant([True] * 4))


def test_the_scale_bar_follows_pixel_size(built, browser, tmp_path):
    folder, _ = built
    _open(browser, folder / "report.html")
    assert not browser.find_elements("css selector", "g.bar")  # PIXEL_SIZE unknown: no bar
    _build(tmp_path, pixel_size=0.08)
    _open(browser, tmp_path / "report.html")
    for i, (um, w) in enumerate(zip((2, 2, 5), (64, 64, 80))):
        # 0.08 um per pixel, 4 pixels per thumbnail pixel: sq* 20.48 um wide, wide 25.6 um; the bar the
        # round length (1, 2, 5 x 10^n um) up to a fifth of it
        bar = browser.find_element("css selector", f"#f-{i} g.bar")
        assert bar.get_attribute("data-um") == str(um)
        assert bar.find_element("css selector", "text").text == f"{um} µm"
        svg = browser.find_element("css selector", f"#f-{i} svg")
        rect = bar.find_element("css selector", "rect")
        shown = rect.rect["width"] / svg.rect["width"]
        assert shown == pytest.approx(um / (0.08 * SCALE) / w, rel=0.03)


def test_a_larger_view_draws_the_cell_ids(built, browser):
    folder, cells = built
    _open(browser, folder / "report.html")
    button = browser.find_element("css selector", "#f-2 button.zoom")  # "wide"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    dialog = browser.find_element("id", "zoom")
    assert dialog.get_attribute("open") is not None
    assert browser.find_element("id", "zoom-title").text.startswith("wide · 320×192")
    ids = browser.find_elements("css selector", "#zoom text.cid")
    expect = cells[cells["image"] == "wide"]
    assert sorted(int(t.text) for t in ids) == sorted(expect["cell_id"])
    view = browser.find_element("id", "zoom-view").rect
    assert view["width"] > 2 * browser.find_element("css selector", "#f-2 .fv").rect["width"] * 0.9
    for t in ids:  # each id at its cell's centroid
        row = expect[expect["cell_id"] == int(t.text)].iloc[0]
        r = t.rect
        cx, cy = r["x"] + r["width"] / 2 - view["x"], r["y"] + r["height"] / 2 - view["y"]
        assert cx == pytest.approx(row["x"] / (80 * SCALE) * view["width"], abs=6)
        assert cy == pytest.approx(row["y"] / (48 * SCALE) * view["height"], abs=6)
    _assert_shows(browser, "#zoom-view", _quadrant([True] * 4), tol=20)
    browser.find_element("id", "zoom-close").click()
    assert dialog.get_attribute("open") is None
    assert len(_visible(browser)) == len(cells)  # the view's copies are gone


def test_hover_names_the_top_class(built, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    folder, cells = built
    _open(browser, folder / "report.html")
    row = cells.iloc[6]
    el = browser.find_element("css selector",
                              f"path.cell[data-image='{row['image']}'][data-cell='{row['cell_id']}']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    ActionChains(browser).move_to_element(el).perform()
    tip = browser.find_element("id", "tip")
    assert tip.is_displayed() and tip.text == row["top_class"]


def _download(driver, folder: Path) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
    driver.find_element("id", "download").click()
    target = folder / "cells_shown.csv"
    for _ in range(100):
        if target.is_file() and not list(folder.glob("*.crdownload")):
            break
        time.sleep(0.05)
    out = pd.read_csv(target, dtype={"image": str})
    target.unlink()
    return out


def test_download_is_the_shown_rows_of_cells_csv(built, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    folder, cells = built
    _open(browser, folder / "report.html")
    got = _download(browser, tmp_path)
    pd.testing.assert_frame_equal(got, cells)  # all cells: cells.csv itself
    name = cells["top_class"].value_counts().index[0]
    Select(browser.find_element("id", "cls")).select_by_visible_text(name)
    expect = cells[cells["top_class"] == name].reset_index(drop=True)
    assert 0 < len(expect) < len(cells)
    pd.testing.assert_frame_equal(_download(browser, tmp_path), expect)
    browser.find_element("id", "mode-p").click()
    browser.execute_script("const s = document.getElementById('thr'); s.value = 0.7;"
                           "s.dispatchEvent(new Event('input'));")
    expect = cells[cells[name] > 0.7].reset_index(drop=True)
    pd.testing.assert_frame_equal(_download(browser, tmp_path), expect)
    assert list(got.columns) == list(report.CELL_COLUMNS)


def test_markup_in_an_id_is_shown_as_text(browser, tmp_path, monkeypatch):
    """An ID with markup (a mapping to a safe file stem given, as for own images' names): no script
    runs, and the text shows as typed in the caption, the info box, the larger view and the failures."""
    monkeypatch.setattr(constants, "file_stem", lambda i: "f" + str(i).encode().hex(), raising=False)
    ids = [MARKUP, "sq2", "wide"]
    cells = pd.DataFrame(_cells_rows(np.random.default_rng(3))).replace({"image": {"sq1": MARKUP}})
    report.write_report(tmp_path, _fields(ids), cells, [{"ID": MARKUP + "2", "reason": MARKUP}],
                        threshold=0.5, title=MARKUP)
    _open(browser, tmp_path / "report.html")
    fig = browser.find_element("id", "f-0")
    assert fig.find_element("css selector", "figcaption").text.startswith(MARKUP + " · ")
    el = fig.find_element("css selector", "path.cell")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()
    assert browser.find_element("css selector", "#info b").text == MARKUP
    fig.find_element("css selector", "button.zoom").click()
    assert browser.find_element("id", "zoom-title").text.startswith(MARKUP + " · ")
    browser.find_element("id", "zoom-close").click()
    assert browser.find_element("css selector", "#failures li").get_attribute("textContent") == \
        f"{MARKUP}2: {MARKUP}"
    assert browser.find_element("tag name", "h1").text == MARKUP
    time.sleep(0.3)  # an injected <img src=x> would have failed to load by now
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.accept()


# ----------------------------------------------------------------------------- no browser needed
def _columns() -> list[str]:
    return ["image", "cell_id", "x", "y", "area", "touches_border", "top_class", "top_prob",
            *constants.CLASS_NAMES]


def _visible_text(page: Path) -> str:
    tags = r"<script.*?</script>|<style.*?</style>|<[^>]+>"
    return " ".join(html.unescape(re.sub(tags, "", page.read_text(), flags=re.S)).split())


def test_no_cells_and_failures_as_a_table(tmp_path):
    """Every field failed or empty: the page still writes."""
    field = report.ReportField("empty", np.zeros((8, 12, 4), np.uint8), np.zeros((8, 12), np.uint16),
                               (32, 48))
    page = report.write_report(tmp_path, [field], pd.DataFrame(columns=_columns()),
                               pd.DataFrame({"ID": ["a"], "reason": ["no cells"]}), threshold=0.5, title="")
    text = page.read_text()
    assert "<b>a</b>: no cells" in text and "class='cell" not in text
    assert report.read_model(tmp_path)["failures"] == [["a", "no cells"]]
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        report.write_report(tmp_path, [report.ReportField("x", b"GIF89a", np.zeros((8, 8)), (8, 8))],
                            pd.DataFrame(columns=_columns()), [], threshold=0.5, title="")


def test_failures_as_dicts_pairs_or_a_table(tmp_path):
    field = report.ReportField("f", np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint16), (8, 8))
    for failures in ([{"ID": "a b", "reason": "why"}], [("a b", "why")], [["a b", "why"]],
                     pd.DataFrame({"ID": ["a b"], "reason": ["why"]})):
        page = report.write_report(tmp_path, [field], pd.DataFrame(columns=_columns()), failures)
        assert report.read_model(tmp_path)["failures"] == [["a b", "why"]]
        assert "<b>a b</b>: why" in page.read_text()
    with pytest.raises(ValueError, match="lacks the key ID or reason"):
        report.write_report(tmp_path, [field], pd.DataFrame(columns=_columns()), [{"image": "a"}])


def test_no_failures_is_said_once(tmp_path):
    field = report.ReportField("f", np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint16), (8, 8))
    page = report.write_report(tmp_path, [field], pd.DataFrame(columns=_columns()), [])
    said = re.findall(r"\w+ failures?", _visible_text(page))
    assert said == ["0 failures"]


@pytest.mark.parametrize("bad", ["../outside", "a/b", MARKUP, "", "..", "/abs"])
def test_an_id_names_its_picture_only_through_its_file_stem(tmp_path, bad):
    """Whatever the ID, its picture is report/{file_stem(ID)}.jpg: a plain name inside report/, nothing is
    written outside out/, and two fields never share a picture."""
    out = tmp_path / "out"
    fields = [report.ReportField("ok", np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint16), (8, 8)),
              report.ReportField(bad, np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint16), (8, 8))]
    report.write_report(out, fields, pd.DataFrame(columns=_columns()), [])
    name = report.thumb_name(bad)
    assert "/" not in name and not name.startswith(".") and name != report.thumb_name("ok")
    assert (out / report.REPORT_DIR / name).is_file()
    assert all(out in p.parents for p in tmp_path.rglob("*") if p.is_file())  # nothing outside out/
    fields[1].image_id = "ok"
    with pytest.raises(ValueError, match="two fields share an ID"):
        report.write_report(out, fields, pd.DataFrame(columns=_columns()), [])


def test_report_data_of_an_older_s5_asks_for_s5_again(tmp_path):
    field = report.ReportField("f", np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint16), (8, 8))
    report.write_report(tmp_path, [field], pd.DataFrame(columns=_columns()), [])
    data = tmp_path / report.REPORT_DIR / report.DATA_FILE
    model = json.loads(data.read_text())
    del model["fields"][0]["tiles"], model["pixel_size"]  # as S5 wrote it with composite thumbnails
    data.write_text(json.dumps(model))
    with pytest.raises(FileNotFoundError, match="report data of an older S5 .*: run S5 again"):
        report.read_model(tmp_path)


def test_the_channel_picture_keeps_each_channel_apart():
    rgby = _channels(48, 80)
    tiles = report.channel_tiles(48, 80)
    assert tiles[constants.GREEN][2:] == [80, 48]  # the protein at the thumbnail's size
    gap = 2 * report.TILE_PAD  # each tile's border (its edge repeated) overlaps no other tile's
    for a, b in itertools.combinations(tiles, 2):
        assert (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0] or a[1] + a[3] + gap <= b[1]
                or b[1] + b[3] + gap <= a[1])
    mosaic = cv2.imdecode(np.frombuffer(report.encode_channels(rgby), np.uint8), cv2.IMREAD_UNCHANGED)
    assert mosaic.ndim == 2  # one grey JPEG
    for c, (x, y, w, h) in enumerate(tiles):
        tile = mosaic[y:y + h, x:x + w].astype(int)
        expect = cv2.resize(rgby[..., c], (w, h), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(tile - expect)[2:-2, 2:-2].max() <= 12, constants.CHANNELS[c]


def test_the_class_palette_has_distinct_colours():
    assert len(report_page.CLASS_COLOURS) == constants.NUM_CLASSES
    lab = [cv2.cvtColor(np.array([[[int(h[i:i + 2], 16) for i in (1, 3, 5)]]], np.float32) / 255,
                        cv2.COLOR_RGB2Lab)[0, 0] for h in report_page.CLASS_COLOURS]
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(lab, 2))
    assert closest > 20, closest  # CIELAB distance of the two closest colours


# ----------------------------------------------------------------------------- what S5 hands over
def test_s5_hands_over_its_failures_pictures_and_pixel_size(tmp_path):
    """S5's report step as S5 runs it: its failure dicts, the channel pictures held by cell_tables (in a
    part), PIXEL_SIZE."""
    from types import SimpleNamespace

    s5 = load_script("S5_predict.py")
    tables = cell_tables.CellTables(threshold=0.5, thumb_size=64, maps=False, thumbs=True)
    full, work = _discs(64, 64, SCALE), _discs(64, 64, 1)
    probs = np.random.default_rng(0).random((len(DISCS), constants.NUM_CLASSES))
    field = fov.FieldOfView.of(_channels(64, 64), work, list(range(1, len(DISCS) + 1)), cell_full=full)
    tables.add("sq1", field, full, probs)
    store = parts.Store(tmp_path / "parts", 1, {0: parts.Part(0, ["sq1"], ["ensemble"], {}, tables=tables)})
    tot = merge.Totals(failures=[{"ID": "bad1", "reason": "unreadable PNG"}], n_pictures=1)
    cfg = SimpleNamespace(IMAGES="", THRESHOLD=0.5, PIXEL_SIZE=0.08, REPORT_PAGE=200)
    s5._write_report(cfg, store, tot, tmp_path / "report.html")
    model = report.read_model(tmp_path)
    assert model["failures"] == [["bad1", "unreadable PNG"]] and model["pixel_size"] == 0.08
    assert "<b>bad1</b>: unreadable PNG" in (tmp_path / "report.html").read_text()
    f = model["fields"][0]
    picture = cv2.imread(str(tmp_path / "report" / f["src"]), cv2.IMREAD_UNCHANGED)
    x, y, w, h = f["tiles"][constants.GREEN]
    protein = picture[y:y + h, x:x + w].astype(int)
    assert picture.ndim == 2 and np.abs(protein - _channels(64, 64)[..., constants.GREEN]).max() < 8


def test_s5_pixel_size_is_checked_at_start(tmp_path):
    with pytest.raises(SystemExit, match=r"S5: --PIXEL_SIZE -1.0: must be a finite number >= 0"):
        load_script("S5_predict.py").main(["--PIXEL_SIZE", "-1", "--OUTPUT_DIR", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
