# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Write a PNG screenshot of a report.html (S5's page) in headless Chromium, offline.

Uses Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (apt-get install chromium
chromium-driver) through Selenium; Selenium Manager never runs (it would download a driver).
The page is opened from disk (file://) as a user would; CLASS, when set, shows only the cells
whose top class it is (the page's class filter). Run:

    python tools/report_screenshot.py --REPORT_HTML output/report.html --OUT_PNG report.png
"""
# ---------------------------------------------------------------------------- files
REPORT_HTML = "output/report.html"  # the page to photograph
OUT_PNG = "output/report.png"       # the screenshot written here
# ---------------------------------------------------------------------------- view
WIDTH = 1400                        # browser window (px)
HEIGHT = 1000
SCROLL_TO = ""                      # "" = the top; else a CSS selector scrolled into view (e.g. ".fields")
CLASS = ""                          # "" = all cells; else a class name for the page's top-class filter
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import config, constants, io


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


def main(argv=None):
    cfg = config.parse(globals(), argv)
    page = constants.resolve(cfg.REPORT_HTML)
    if not page.is_file():
        raise SystemExit(f"no report at {page} (REPORT_HTML)")
    driver = open_browser(cfg.CHROMIUM, cfg.CHROMEDRIVER, cfg.WIDTH, cfg.HEIGHT)
    try:
        driver.get(page.resolve().as_uri())
        if cfg.CLASS:
            j = constants.CLASS_NAMES.index(cfg.CLASS)
            driver.execute_script("const s=document.getElementById('cls');s.value=arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", str(j))
        if cfg.SCROLL_TO:
            driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", cfg.SCROLL_TO)
        time.sleep(0.5)  # lazy thumbnails in view load
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    io.atomic_write_bytes(constants.resolve(cfg.OUT_PNG), png)
    print(f"wrote {constants.resolve(cfg.OUT_PNG)}")


if __name__ == "__main__":
    main()
