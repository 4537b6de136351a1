"""Checks every browser test runs over each page and state it reaches: axe-core finds no
serious or critical accessibility violation, and the page broke no rule of its
Content-Security-Policy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.helpers import scaled

#: Installed by `./dev` (package.json); a missing file fails the test, never skips it.
AXE = Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"
#: Where the page fetches axe from: a same-origin URL, answered by the test itself, so that
#: the page's own policy (script-src 'self') lets it run, and stays on while it does.
AXE_PATH = "/static/_test/axe.min.js"

# Every violation of the page's CSP, in order; `cspViolations` stays empty on a clean page.
WATCH_CSP = """(() => {
  window.cspViolations = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    window.cspViolations.push(
      `${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
  });
})();"""

BAD = ("serious", "critical")


async def wait_js(page: Any, expression: str, timeout: float = 30_000,
                  polling: float = 100) -> None:
    """Until `expression` (evaluated in the page, a promise is awaited) is truthy, for at
    most `timeout` ms. Playwright's wait_for_function compiles its predicate with
    `new Function` inside the page, which the pages' CSP (no 'unsafe-eval') forbids;
    evaluate() runs through the DevTools protocol, outside the page's policy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout / 1000
    last: object = None
    while True:
        last = await page.evaluate(expression)
        if last:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout / 1000:.1f} s (last {last!r}):"
                                 f" {expression[:300]}")
        # No event to await inside another process's page: poll as wait_for_function does.
        await asyncio.sleep(polling / 1000)


async def watch(page: Any) -> None:
    """Prepares a fresh page: CSP violations recorded, axe served from our own origin."""
    assert AXE.is_file(), f"{AXE} missing: run ./dev setup (npm ci)"
    await page.add_init_script(WATCH_CSP)

    async def serve_axe(route: Any) -> None:
        await route.fulfill(path=str(AXE), content_type="text/javascript")

    await page.route(f"**{AXE_PATH}", serve_axe)


async def audit(page: Any, state: str) -> None:
    """No serious or critical axe violation in the page as it is now, and no CSP violation
    since it loaded. `state` names the page and state in the failure message."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        origin = await page.evaluate("location.origin")
        await page.add_script_tag(url=origin + AXE_PATH)
        await wait_js(page, "typeof window.axe === 'object'", timeout=scaled(10) * 1000)
    result = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then((r) => r.violations.map("
        "(v) => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5)})))")
    bad = [v for v in result if v["impact"] in BAD]
    assert bad == [], f"{state}: {json.dumps(bad, ensure_ascii=False, indent=1)}"
    violations = await page.evaluate("window.cspViolations || []")
    assert violations == [], f"{state}: CSP violations {violations}"


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


async def open_page(browser: Any, url: str, name: str, size: dict[str, int] | None = None,
                    init_script: str | None = None) -> Any:
    """A fresh context and page at `size`, watched (CSP, axe), console echoed, at `url`."""
    context = await browser.new_context(viewport=size or DESKTOP)
    page = await context.new_page()
    page.on("console", lambda m: print(f"[{name}] {m.type}: {m.text}"))
    await watch(page)
    if init_script is not None:
        await page.add_init_script(init_script)
    await page.goto(url)
    return page


async def in_view(page: Any, selector: str) -> bool:
    """The element is visible and wholly inside the viewport without scrolling."""
    box = await page.evaluate(
        "(s) => { const r = document.querySelector(s).getBoundingClientRect();"
        " return [r.top, r.bottom, r.height, window.scrollY, window.innerHeight]; }", selector)
    top, bottom, height, scrolled, viewport = box
    return bool(height > 0 and scrolled == 0 and top >= 0 and bottom <= viewport)
