"""Plotly figures to PNG files with the Chromium that the browser tests already use, through Playwright.

Plotly's own static export (``fig.write_image``) needs kaleido, which drives a Chrome it downloads or finds;
Debian's Chromium and Playwright are already on every machine that runs the browser tests (``make test``
installs them, scripts/ensure-chromium.sh), and nothing can be downloaded here. So the figure is drawn by the
plotly.js that ships inside the plotly package, on a local page with no network, and Chromium screenshots it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import plotly.io as pio
from plotly.offline import get_plotlyjs

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class PngExportError(RuntimeError):
    pass


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise PngExportError("no Chromium found (apt-get install chromium, or bash scripts/ensure-chromium.sh)")


def write_pngs(figures: dict, out_dir: str | Path, width: int = 1100, height: int = 420) -> list[Path]:
    """Each figure as OUT_DIR/<name>.png; returns the paths."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise PngExportError("PNG export needs Playwright (pip install -e .[dev])") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            # Nothing leaves the machine: every request the page would make is refused.
            page.route("**/*", lambda route: route.abort())
            page.set_content(f"<html><body style='margin:0;background:#fff'><div id='c'></div>"
                             f"<script>{get_plotlyjs()}</script></body></html>")
            for name, fig in figures.items():
                spec = json.loads(pio.to_json(fig, validate=False))
                layout = {**spec.get("layout", {}), "width": width, "height": height,
                          "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff"}
                page.evaluate("([data, layout]) => Plotly.newPlot('c', data, layout, {staticPlot: true})",
                              [spec["data"], layout])
                page.wait_for_selector("#c .main-svg")
                path = out_dir / f"{name}.png"
                page.locator("#c").screenshot(path=str(path))
                written.append(path)
        finally:
            browser.close()
    return written
