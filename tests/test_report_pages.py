"""A paged report (``report.write_pages``) in headless Chromium: the pages open and link to each other in
order, the jump box goes to a field on a later page, the class filter lists the fields of all pages
and opens a later one, the summary counts every field, S6's truth on a paged report; and the writer
consumes its fields one page at a time (a generator, never materialised). The browser fixture is
tests/test_report.py's (skipped without Debian's chromium + chromedriver unless CI is set)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import test_report
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select
from test_report import _build, _open, s6_report

from common import constants
from common.report import pages, report

browser = test_report.browser  # the module's one Chromium (a fixture)
PAGE = 3          # fields per page
N_FIELDS = 8      # pages of 3, 3 and 2 fields
RARE = 5          # the class only the last field has a cell of (at p >= 0.5)
TH, TW, SCALE = 32, 40, 2  # thumbnail (h, w); original pixels per thumbnail pixel
DISCS = [(10, 10, 6), (28, 20, 7)]  # (x, y, r) in thumbnail pixels


def _field(i: int) -> tuple[report.ReportField, pd.DataFrame]:
    """Field i: two disc cells; top class i % 3 at p 0.6, and in the last field a cell of RARE at 0.9."""
    image_id = f"fov{i:02d}"
    labels = np.zeros((TH, TW), np.uint16)
    rows = []
    for c, (x, y, r) in enumerate(DISCS, 1):
        cv2.circle(labels, (x, y), r, c, -1)
        p = np.full(constants.NUM_CLASSES, 0.1)
        p[i % 3] = 0.6
        if i == N_FIELDS - 1 and c == 2:
            p[RARE] = 0.9
        rows.append({"image": image_id, "cell_id": c, "x": x * SCALE, "y": y * SCALE,
                     "area": int(np.pi * (r * SCALE) ** 2), "touches_border": 0,
                     "top_class": constants.CLASS_NAMES[int(p.argmax())], "top_prob": p.max(),
                     **dict(zip(constants.CLASS_NAMES, p))})
    rgby = np.full((TH, TW, 4), 40 + 20 * i, np.uint8)
    field = report.ReportField(image_id, report.encode_channels(rgby), labels, (TH * SCALE, TW * SCALE))
    return field, pd.DataFrame(rows, columns=list(report.CELL_COLUMNS))


def _write(folder: Path, entries) -> Path:
    return report.write_pages(folder, entries, [("bad01", "unreadable")], threshold=0.5, title="paged",
                              pixel_size=0.0, page_size=PAGE)


@pytest.fixture(scope="module")
def paged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paged")
    _write(folder, (_field(i) for i in range(N_FIELDS)))
    return folder


def _where(driver) -> tuple[str, list[str]]:
    """The page shown (its file name) and the IDs of its fields' figures, in order."""
    ids = driver.execute_script("return [...document.querySelectorAll('figure.field')].map(f => f.id)")
    return driver.current_url.split("/")[-1], ids


def test_pages_open_and_link_to_each_other_in_order(paged, browser):
    expect = [("report.html", ["f-0", "f-1", "f-2"]), ("page-0002.html", ["f-3", "f-4", "f-5"]),
              ("page-0003.html", ["f-6", "f-7"])]
    console = _open(browser, paged / "report.html")
    assert not [e for e in console if e["level"] in ("SEVERE", "WARNING")], console
    for n, (name, ids) in enumerate(expect):
        assert _where(browser) == (name, ids)
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"], name
        assert browser.find_element("id", "page-of").text.startswith(f"page {n + 1} of 3 ")
        assert browser.execute_script("return typeof window.reportReady") == "number"
        assert bool(browser.find_elements("id", "prev")) == (n > 0)
        if n == 1:  # a later page's field: its larger view with the cell ids
            browser.find_element("css selector", "#f-4 button.zoom").click()
            assert browser.find_element("id", "zoom-title").text.startswith("fov04 · ")
            assert len(browser.find_elements("css selector", "#zoom text.cid")) == len(DISCS)
            browser.find_element("id", "zoom-close").click()
        if n + 1 < len(expect):
            browser.find_element("id", "next").click()
        else:
            assert not browser.find_elements("id", "next")
    for name, ids in reversed(expect[:-1]):
        browser.find_element("id", "prev").click()
        assert _where(browser) == (name, ids)
    shown = {browser.find_element("css selector", "#f-1 figcaption").text.split(" ")[0]}
    assert shown == {"fov01"}


def test_the_jump_box_goes_to_a_field_on_a_later_page(paged, browser):
    _open(browser, paged / "report.html")
    box = browser.find_element("id", "jump")
    box.send_keys("nosuchfield", Keys.ENTER)
    assert browser.find_element("id", "jump-msg").text == "no field nosuchfield"
    box.clear()
    box.send_keys("fov07", Keys.ENTER)
    for _ in range(100):
        if browser.current_url.endswith("page-0003.html#f-7"):
            break
        time.sleep(0.05)
    assert browser.current_url.endswith("/report/page-0003.html#f-7")
    fig = browser.find_element("id", "f-7")
    assert fig.find_element("css selector", "figcaption").text.startswith("fov07 · ")
    browser.find_element("id", "jump").send_keys("fov06", Keys.ENTER)  # on this page: no new page
    assert browser.current_url.endswith("/report/page-0003.html#f-6")


def test_the_class_filter_lists_the_fields_of_every_page(paged, browser):
    _open(browser, paged / "report.html")
    Select(browser.find_element("id", "cls")).select_by_value(str(RARE))
    links = browser.find_elements("css selector", "#matches a.match")
    assert [a.text for a in links] == ["fov07"]  # it lives on page 3
    assert browser.find_element("id", "n-matches").text.startswith("1 of 8 fields")
    assert not [c for c in browser.find_elements("css selector", "path.cell") if c.is_displayed()]
    Select(browser.find_element("id", "cls")).select_by_value("0")
    assert [a.text for a in browser.find_elements("css selector", "#matches a.match")] == \
        ["fov00", "fov03", "fov06"]
    Select(browser.find_element("id", "cls")).select_by_value(str(RARE))
    browser.find_element("css selector", "#matches a.match").click()
    assert browser.current_url.endswith("/report/page-0003.html#f-7")
    assert _where(browser)[1] == ["f-6", "f-7"]


def test_the_summary_counts_every_field(paged, browser):
    _open(browser, paged / "report.html")
    cells = pd.concat([_field(i)[1] for i in range(N_FIELDS)], ignore_index=True)
    assert browser.find_element("id", "n-fields").text == str(N_FIELDS)
    assert browser.find_element("id", "n-cells").text == str(len(cells))
    assert browser.find_element("id", "n-failures").text == "1"
    bars = browser.execute_script("return [...document.querySelectorAll('#class-bars text')]"
                                  ".map(t => t.textContent)")
    counts = dict(zip(bars[0::2], bars[1::2]))  # name, count
    expect = cells["top_class"].value_counts()
    assert {n: int(c) for n, c in counts.items() if int(c)} == expect.to_dict()
    assert len(browser.find_elements("css selector", "path.cell")) == PAGE * len(DISCS)  # page 1's own


def test_page_files_and_the_model_cover_every_page(paged, tmp_path):
    written = {p.name for p in (paged / report.REPORT_DIR).iterdir()} - {
        report.thumb_name(f"fov{i:02d}") for i in range(N_FIELDS)}
    assert written == set(report.page_files(N_FIELDS, PAGE))
    assert report.page_files(0, PAGE) == ["data.json", "index.js", "page-0001.json"]
    model = report.read_model(paged)
    whole = tmp_path / "one"  # the same fields on one page
    fields, rows = zip(*(_field(i) for i in range(N_FIELDS)))
    page = report.write_report(whole, list(fields), pd.concat(rows), [("bad01", "unreadable")],
                               threshold=0.5, title="paged")
    assert page.is_file() and not (whole / report.REPORT_DIR / pages.page_html(1)).exists()
    one = report.read_model(whole)
    assert model["fields"] == one["fields"] and model["cells"] == one["cells"]
    assert (model["page_size"], one["page_size"]) == (PAGE, N_FIELDS)


def test_write_pages_holds_one_page_of_a_generator(tmp_path):
    folder = tmp_path / "out"

    def entries():
        for i in range(N_FIELDS):  # i items were pulled before this one
            done = [q for q in range(3) if (folder / report.REPORT_DIR / pages.page_json(q)).is_file()]
            assert len(done) >= (i - 1) // PAGE, (i, done)  # page q written once item (q+1)*PAGE came
            if i > PAGE:
                assert (folder / report.REPORT_DIR / pages.page_json(0)).is_file()
            yield _field(i)

    gen = entries()
    _write(folder, gen)
    assert next(gen, None) is None and (folder / "report.html").is_file()
    with pytest.raises(ValueError, match="page_size 0: must be a whole number >= 1"):
        report.write_pages(folder, iter(()), [], threshold=0.5, title="", pixel_size=0.0, page_size=0)
    bad = ((f, rows.assign(image="other")) for f, rows in [_field(0)])
    with pytest.raises(ValueError, match="cells of 'other' given with the field 'fov00'"):
        _write(tmp_path / "bad", bad)


def test_s6_truth_on_a_paged_report(browser, tmp_path, capsys):
    """The AP table and the gallery on page 1, a crop of a field of page 2 painted there, and each cell's
    truth on its own page."""
    folder = tmp_path / "out"
    cells = _build(folder, page_size=2)  # test_report's three fields: sq1, sq2 on page 1, wide on page 2
    s6_report(browser, folder, cells, capsys)
    crop = browser.find_element("css selector", "#gallery figure.crop[data-image='wide'][data-cell='1']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", crop)
    painted = "return arguments[0].querySelector('canvas.pic').dataset.painted === '1'"
    for _ in range(100):
        if browser.execute_script(painted, crop):
            break
        time.sleep(0.05)
    assert browser.execute_script(painted, crop)  # its field lives on page 2
    browser.find_element("id", "next").click()
    el = browser.find_element("css selector", "path.cell[data-image='wide'][data-cell='2']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()
    assert browser.find_element("id", "truth").text.startswith("truth: ")
    assert not browser.find_elements("id", "ap-table")
    shutil.rmtree(folder)


def test_a_missing_page_of_data_stops_s6_with_one_line(paged, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(paged, folder)
    (folder / report.REPORT_DIR / pages.page_json(1)).unlink()
    with pytest.raises(FileNotFoundError, match=r"page-0002\.json: a page of the report's data is missing: "
                                                r"run S5 again"):
        report.read_model(folder)
