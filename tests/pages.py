"""Pages in Debian's headless Chromium (driven by playwright, no browser download): report.html and trace.html are
opened with the network blocked, and what they draw is checked on screenshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"  # Debian's package (tests/install-services.sh installs it)


def launch():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is missing: run tests/install-services.sh"
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])
    return pw, browser


def blank_stats(png: bytes) -> tuple[float, float]:
    """(standard deviation of the grey levels, share of pixels that are not near-white)."""
    import io

    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(grey.std()), float((grey < 235).mean())


def open_page(browser, path: Path):
    """The page with the network blocked: every request that is not the file itself is recorded and refused."""
    context = browser.new_context(viewport={"width": 1150, "height": 900})
    requests, errors = [], []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                  else (requests.append(route.request.url), route.abort()))
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return context, page, requests, errors
