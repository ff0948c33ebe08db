"""report.html in headless Chromium: offline, every cell drawn, top three on click, the class filter,
and S6 --REPORT's truth section. One browser for the module (Debian's chromium + chromedriver;
skipped without them unless CI is set)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from common import constants, encoding, report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCALE = 4  # original pixels per thumbnail pixel
FIELDS = {"sq1": (64, 64), "sq2": (64, 64), "wide": (48, 80)}  # thumbnail (h, w); "wide" is not square
DISCS = [(14, 14, 8), (40, 16, 9), (20, 40, 7), (44, 40, 10)]  # (x, y, r) in thumbnail pixels


def _discs(h: int, w: int, scale: int) -> np.ndarray:
    lab = np.zeros((h * scale, w * scale), np.uint16)
    for c, (x, y, r) in enumerate(DISCS, 1):
        cv2.circle(lab, (x * scale, y * scale), r * scale, c, -1)
    return lab


def _build(folder: Path) -> pd.DataFrame:
    """Write the report of the synthetic fields (+ S5's labels/ at the original size); the cells."""
    rng = np.random.default_rng(3)
    fields, rows = [], []
    for image_id, (h, w) in FIELDS.items():
        thumb_labels = _discs(h, w, 1)
        thumb = np.dstack([(thumb_labels > 0) * 200, (thumb_labels * 50) % 255, np.full((h, w), 30)])
        thumb = thumb.astype(np.uint8)
        encoded = cv2.imencode(".png", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))[1].tobytes()
        fields.append(report.ReportField(image_id, encoded if image_id == "sq2" else thumb, thumb_labels,
                                         (h * SCALE, w * SCALE)))
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "labels" / f"{image_id}.png"), _discs(h, w, SCALE))
        for c, (x, y, r) in enumerate(DISCS, 1):
            p = rng.random(constants.NUM_CLASSES)
            rows.append({"image": image_id, "cell_id": c, "x": x * SCALE, "y": y * SCALE,
                         "area": int(np.pi * (r * SCALE) ** 2), "touches_border": False,
                         "top_class": constants.CLASS_NAMES[int(p.argmax())], "top_prob": p.max(),
                         **dict(zip(constants.CLASS_NAMES, p))})
    cells = pd.DataFrame(rows)
    report.write_report(folder, fields, cells, [("broken1", "unreadable PNG")], threshold=0.5,
                        title="test report")
    return cells


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
    assert sum("/report/" in u for u in set(urls)) == len(FIELDS)  # every thumbnail, from the folder
    assert browser.find_element("id", "n-failures").text == "1"
    assert "broken1" in browser.find_element("id", "failures").get_attribute("innerHTML")


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
        expect = cells[cells[name].round(4) > t]
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


def test_s6_report_adds_the_ap_table_and_the_gallery(built, browser, tmp_path, capsys):
    folder, cells = built
    out = tmp_path / "out"
    shutil.copytree(folder, out)
    sub, truth_csv = _truth_case(out, cells)
    load_script("S6_evaluate.py", "S6_evaluate").main(
        ["--SUBMISSION", str(sub), "--TRUTH", str(truth_csv), "--REPORT", "true", "--PLOTS", "false"])
    assert "(with the truth)" in capsys.readouterr().out
    console = _open(browser, out / "report.html")
    assert not [e for e in console if e["level"] == "SEVERE"], console
    assert len(browser.find_elements("css selector", "#ap-table tr")) == 1 + constants.NUM_CLASSES
    crops = browser.find_elements("css selector", "#gallery figure.crop")
    assert crops
    wrong = {(f.get_attribute("data-image"), int(f.get_attribute("data-cell"))) for f in crops}
    assert {(i, 1) for i in FIELDS} <= wrong  # the cells whose truth lacks their top class
    assert len(browser.find_elements("css selector", "path.cell")) == len(cells)
    el = browser.find_element("css selector", "path.cell[data-image='wide'][data-cell='2']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()
    assert browser.find_element("id", "truth").text.startswith("truth: ")


def test_screenshot_tool_writes_a_png(built, browser, tmp_path):
    folder, _ = built
    tool = load_script("tools/report_screenshot.py", "report_screenshot")
    png = tmp_path / "shot.png"
    tool.main(["--REPORT_HTML", str(folder / "report.html"), "--OUT_PNG", str(png), "--WIDTH", "800",
               "--HEIGHT", "600"])
    assert png.read_bytes().startswith(b"\x89PNG")


def test_no_cells_and_failures_as_a_table(tmp_path):
    """Every field failed or empty: the page still writes (no browser needed)."""
    columns = ["image", "cell_id", "x", "y", "area", "touches_border", "top_class", "top_prob",
               *constants.CLASS_NAMES]
    field = report.ReportField("empty", np.zeros((8, 12, 3), np.uint8), np.zeros((8, 12), np.uint16),
                               (32, 48))
    page = report.write_report(tmp_path, [field], pd.DataFrame(columns=columns),
                               pd.DataFrame({"ID": ["a"], "reason": ["no cells"]}), threshold=0.5, title="")
    text = page.read_text()
    assert "<b>a</b>: no cells" in text and "class='cell" not in text
    assert report.read_model(tmp_path)["failures"] == [["a", "no cells"]]
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        report.write_report(tmp_path, [report.ReportField("x", b"GIF89a", np.zeros((8, 8)), (8, 8))],
                            pd.DataFrame(columns=columns), [], threshold=0.5, title="")
