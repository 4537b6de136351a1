"""Checks every browser test runs over each page and state it reaches: axe-core finds no
serious or critical accessibility violation, and the page broke no rule of its
Content-Security-Policy."""

from __future__ import annotations

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
        await page.wait_for_function("typeof window.axe === 'object'",
                                     timeout=scaled(10) * 1000)
    result = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then((r) => r.violations.map("
        "(v) => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5)})))")
    bad = [v for v in result if v["impact"] in BAD]
    assert bad == [], f"{state}: {json.dumps(bad, ensure_ascii=False, indent=1)}"
    violations = await page.evaluate("window.cspViolations || []")
    assert violations == [], f"{state}: CSP violations {violations}"
