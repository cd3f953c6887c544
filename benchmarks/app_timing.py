"""What a visitor waits for, measured in a real Chromium against a fresh ``python app.py``.

    python benchmarks/app_timing.py [--runs 3] [--json app_timing.json]

Each run starts the app (bundled backbone, Hub offline, 127.0.0.1), then measures:
- ``http_ready_s``: process start -> the server answers;
- ``page_interactive_s``: process start -> the page shows its Run button (in the browser);
- ``examples_prepared_s``: process start -> the example sets' fits are ready for every visitor
  (the server log says so; the visitor's clicks below wait for it, as on a server already up);
- ``cold_s``: click Run on the ball-screw example -> heat map shown (the first of this visitor:
  the example's fit, prepared at the app's start-up, is reused, or waited for if still running);
- ``warm_s``: click another example query -> its heat map shown (fit reused), 9 times;
- ``patch_click_s``: click a patch of the heat map -> its per-dimension chart shown, 6 times;
- ``threshold_s``: click on the threshold slider -> the new mask shown, 6 times;
- ``fit_s``: the memory-bank share set to 0.3 -> the page says the fit is ready (the app fits
  the 7 references, not prepared, as soon as the share changes);
- ``after_fit_s``: then click Run -> heat map shown (that fit reused: prediction only);
- ``changed_s``: the share set to 0.35 and, once the page says its fit is under way, to 0.4 ->
  the page says the fit for 0.4 is ready (the fit for 0.35 stops at its next step).
Run it on an otherwise idle machine; it needs Chromium (``CHROMIUM`` or /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from app_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NEW_CHART,
    NEW_IMAGE,
    start_server,
    stop_server,
    wait_for_log,
)

TIMEOUT_MS = 120_000
MAP, MASK = "#out-sgfr img", "#out-mask img"
NOTE_SAYS = "s => document.querySelector('#fit-note').innerText.includes(s)"  # the fit note


def one_run(browser, workdir: Path) -> dict:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    t0 = time.perf_counter()
    proc, url = start_server(workdir / "server.log", workdir / "gradio")
    try:
        http = time.perf_counter() - t0
        page.goto(url)
        page.locator("#run").wait_for(timeout=TIMEOUT_MS)
        interactive = time.perf_counter() - t0
        # The visitor's clicks come once the example fits are ready, as on a server already up.
        wait_for_log(workdir / "server.log", "example fits prepared", TIMEOUT_MS / 1000)
        prepared = time.perf_counter() - t0

        def shown() -> str | None:
            img = page.locator("#out-sgfr img")
            return img.first.get_attribute("src") if img.count() else None

        page.locator("#example-ballscrew").click()
        page.locator("#refs-gallery img").nth(6).wait_for(timeout=TIMEOUT_MS)
        page.locator("#example-queries img").nth(2).wait_for(timeout=TIMEOUT_MS)
        time.sleep(1.0)  # a visitor looks before clicking
        t = time.perf_counter()
        page.locator("#run").click()
        page.wait_for_function(NEW_IMAGE, arg=[MAP, None], timeout=TIMEOUT_MS)
        cold = time.perf_counter() - t
        page.locator("#dims svg").wait_for(timeout=TIMEOUT_MS)
        warm = []
        for i in [1, 2, 0] * 3:  # the first query is on show already
            time.sleep(0.8)
            old = shown()
            t = time.perf_counter()
            page.locator("#example-queries img").nth(i).click()
            page.wait_for_function(NEW_IMAGE, arg=[MAP, old], timeout=TIMEOUT_MS)
            warm.append(time.perf_counter() - t)
        time.sleep(1.5)  # the last run's chart and patches arrive meanwhile
        clicks, heat = [], page.locator("#out-sgfr img")
        for fx, fy in [(0.1, 0.2), (0.5, 0.5), (0.9, 0.8), (0.3, 0.7), (0.7, 0.3), (0.2, 0.9)]:
            time.sleep(0.5)
            old = page.locator("#dims .dimchart-title").inner_text()
            box = heat.bounding_box()
            t = time.perf_counter()
            heat.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
            page.wait_for_function(NEW_CHART, arg=old, timeout=TIMEOUT_MS)
            clicks.append(time.perf_counter() - t)
        moves, slider = [], page.locator("#threshold input[type=range]")
        for fx in (0.3, 0.7, 0.45, 0.85, 0.2, 0.6):
            time.sleep(0.5)
            lo, hi, now = map(float, slider.evaluate("e => [e.min, e.max, e.value]"))
            if abs(fx - (now - lo) / (hi - lo)) < 0.05:  # the same value: nothing to redraw
                fx += 0.1
            old = page.locator("#out-mask img").first.get_attribute("src")
            box = slider.bounding_box()
            t = time.perf_counter()
            slider.click(position={"x": box["width"] * fx, "y": box["height"] / 2})
            page.wait_for_function(NEW_IMAGE, arg=[MASK, old], timeout=TIMEOUT_MS)
            moves.append(time.perf_counter() - t)

        def set_share(value: str) -> None:
            page.locator("#ratio input[type=number]").fill(value)
            page.locator("#ratio input[type=number]").press("Tab")

        t = time.perf_counter()
        set_share("0.3")
        page.wait_for_function(NOTE_SAYS, arg="30% of the bank", timeout=TIMEOUT_MS)
        fit = time.perf_counter() - t
        time.sleep(1.0)
        old = shown()
        t = time.perf_counter()
        page.locator("#run").click()
        page.wait_for_function(NEW_IMAGE, arg=[MAP, old], timeout=TIMEOUT_MS)
        after_fit = time.perf_counter() - t
        assert "reused" in page.locator("#summary").inner_text()
        set_share("0.35")
        page.wait_for_function(NOTE_SAYS, arg="Fitting", timeout=TIMEOUT_MS)
        t = time.perf_counter()
        set_share("0.4")
        page.wait_for_function(NOTE_SAYS, arg="40% of the bank", timeout=TIMEOUT_MS)
        changed = time.perf_counter() - t
    finally:
        page.close()
        stop_server(proc)
    return dict(
        http_ready_s=round(http, 2),
        page_interactive_s=round(interactive, 2),
        examples_prepared_s=round(prepared, 2),
        cold_s=round(cold, 2),
        warm_median_s=round(statistics.median(warm), 2),
        warm_max_s=round(max(warm), 2),
        patch_click_s=round(statistics.median(clicks), 2),
        threshold_s=round(statistics.median(moves), 2),
        fit_s=round(fit, 2),
        after_fit_s=round(after_fit, 2),
        changed_s=round(changed, 2),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh app starts to measure")
    ap.add_argument("--json", type=Path, help="also write the runs and their medians here")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    runs = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for i in range(args.runs):
            work = Path(tmp) / f"run{i}"
            work.mkdir()
            runs.append(one_run(browser, work))
            print(json.dumps(runs[-1]), flush=True)
        browser.close()
    median = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    print("median over runs:", json.dumps(median))
    if args.json:
        args.json.write_text(json.dumps(dict(runs=runs, median=median), indent=1))


if __name__ == "__main__":
    main()
