# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Write a screenshot (PNG or JPEG) of a report.html (S5's page) in headless Chromium, offline.

Uses Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (apt-get install chromium
chromium-driver) through Selenium; Selenium Manager never runs (it would download a driver).
The page is opened from disk (file://) as a user would; CLASS, when set, shows only the cells
whose top class it is (the page's class filter); PROTEIN_ALONE clicks the page's "protein alone"
(the protein stain in grey); ZOOM opens the larger view of that field. Run:

    python tools/report_screenshot.py --REPORT_HTML output/report.html --OUT_IMAGE report.png
    python tools/report_screenshot.py --PROTEIN_ALONE true --SCROLL_TO .fields --OUT_IMAGE shot.jpg
"""
# ---------------------------------------------------------------------------- files
REPORT_HTML = "output/report.html"  # the page to photograph
OUT_IMAGE = "output/report.png"     # the screenshot written here: .png, or .jpg / .jpeg (JPEG_QUALITY)
JPEG_QUALITY = 80                   # of a .jpg screenshot
# ---------------------------------------------------------------------------- view
WIDTH = 1400                        # browser window (px)
HEIGHT = 1000
SCROLL_TO = ""                      # "" = the top; else a CSS selector scrolled into view (e.g. ".fields")
CLASS = ""                          # "" = all cells; else a class name for the page's top-class filter
PROTEIN_ALONE = False               # show the protein stain alone (the page's "protein alone" button)
ZOOM = ""                           # "" = none; else the ID of a field whose larger view is opened
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from common import config, constants, images, io

_RENAMED = {"OUT_PNG": "OUT_IMAGE"}


def open_browser(chromium: str, chromedriver: str, width: int, height: int):
    """A headless Chromium driven by the given chromedriver, console and network logs kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _show(driver, cfg) -> None:
    """Set the page up as the constants say: class filter, protein alone, scroll, larger view."""
    if cfg.CLASS:
        j = constants.CLASS_NAMES.index(cfg.CLASS)
        driver.execute_script("const s=document.getElementById('cls');s.value=arguments[0];"
                              "s.dispatchEvent(new Event('input'));", str(j))
    if cfg.PROTEIN_ALONE:
        driver.execute_script("document.getElementById('protein-alone').click()")
    if cfg.SCROLL_TO:
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", cfg.SCROLL_TO)
    if cfg.ZOOM:
        found = driver.execute_script(
            "const b=Array.from(document.querySelectorAll('figure.field')).find(f=>f.querySelector("
            "'figcaption').firstChild.textContent.startsWith(arguments[0]+' \u00b7 '));"
            "if(b)b.querySelector('button.zoom').click();return !!b;", cfg.ZOOM)
        if not found:
            raise SystemExit(f"no field {cfg.ZOOM!r} in the report (ZOOM)")


def _wait_painted(driver, seconds: float = 10.0) -> None:
    """Wait (at most ``seconds``) until every picture near the view is loaded and painted."""
    pending = ("return [...document.querySelectorAll('canvas.pic')]"
               ".filter(c => c.dataset.near === '1' && c.dataset.painted !== '1').length")
    time.sleep(0.3)  # the page sees what is near the view
    end = time.time() + seconds
    while driver.execute_script(pending) and time.time() < end:
        time.sleep(0.05)


def main(argv=None):
    cfg = config.parse(globals(), argv, renamed=_RENAMED)
    page = constants.resolve(cfg.REPORT_HTML)
    if not page.is_file():
        raise SystemExit(f"no report at {page} (REPORT_HTML)")
    out = constants.resolve(cfg.OUT_IMAGE)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise SystemExit(f"--OUT_IMAGE {cfg.OUT_IMAGE}: must end in .png, .jpg or .jpeg")
    driver = open_browser(cfg.CHROMIUM, cfg.CHROMEDRIVER, cfg.WIDTH, cfg.HEIGHT)
    try:
        driver.get(page.resolve().as_uri())
        _show(driver, cfg)
        _wait_painted(driver)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    if out.suffix.lower() != ".png":
        shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        png = images.encode_jpeg(shot, cfg.JPEG_QUALITY)
    io.atomic_write_bytes(out, png)
    print(f"wrote {out} ({len(png) / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
