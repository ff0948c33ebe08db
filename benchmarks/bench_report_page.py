# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Benchmark of report.html in the browser: load, a filter change, a stain toggle, in headless Chromium.

Opens a report (e.g. one of ``bench_report.py --BENCH_DIR``) from disk REPEATS times and prints, per
load: the seconds to the load event, of a class-filter change and of a stain toggle (the canvases
near the view repainted), then how many canvases hold pixels at once after scrolling to the end (the
page empties those far from the view). Uses tools/report_screenshot.py's browser.

    python benchmarks/bench_report.py --N_IMAGES 559 --BENCH_DIR /tmp/report559
    python benchmarks/bench_report_page.py --REPORT_HTML /tmp/report559/n559/report.html
"""
# ---------------------------------------------------------------------------- page
REPORT_HTML = "output/report.html"  # the page to time
REPEATS = 3                         # loads (the first one reads the files from disk)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import config, constants

_FILTER = ("const s=document.getElementById('cls'),t=performance.now();s.value='0';"
           "s.dispatchEvent(new Event('input'));document.body.offsetHeight;return performance.now()-t")
_TOGGLE = ("const b=document.getElementById('ch-0'),t=performance.now();b.click();"
           "document.body.offsetHeight;return performance.now()-t")
_HELD = "return [...document.querySelectorAll('canvas.pic')].filter(c=>c.width>0).length"


def main(argv=None):
    cfg = config.parse(globals(), argv)
    page = constants.resolve(cfg.REPORT_HTML)
    if not page.is_file():
        raise SystemExit(f"no report at {page} (REPORT_HTML)")
    tool_file = ROOT / "tools" / "report_screenshot.py"
    spec = importlib.util.spec_from_file_location("report_screenshot", tool_file)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    driver = tool.open_browser(cfg.CHROMIUM, cfg.CHROMEDRIVER, 1400, 1000)
    try:
        for _ in range(cfg.REPEATS):
            driver.get(page.resolve().as_uri())
            load = driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd")
            filt, toggle = driver.execute_script(_FILTER), driver.execute_script(_TOGGLE)
            print(f"load {load / 1000:.2f} s, filter change {filt / 1000:.3f} s, "
                  f"stain toggle {toggle / 1000:.3f} s")
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        time.sleep(1)
        total = driver.execute_script("return document.querySelectorAll('canvas.pic').length")
        print(f"after scrolling to the end: {driver.execute_script(_HELD)} of {total} canvases hold pixels")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
