"""The resume itself, in real browsers: two Chromium pages (fake camera and microphone) in a
live recorded call while the service (`telemed run`, its own process) is SIGKILLed and started
again; the embedded media server (its own process) streams on. The pages reconnect on their
own, join with `resume: true`, keep their peer connections, and the call goes live again
with no failure shown. The aiortc takeover tests (test_takeover_functional.py) cover the
protocol; this one covers call.js.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import scaled
from tests.media_fixtures import run_mediaserver
from tests.page_checks import wait_js
from tests.services import RedisServer
from tests.test_takeover_functional import call_state, create_call, node
from tests.test_web_browser_functional import KEEP_SOCKETS, assert_video_advances, open_call
from tests.webhook_receiver import run_receiver

SECRET = "takeover-test-secret"
LIVE = "body[data-call-state=live]"
#: Pages' peer connections, to tell afterwards whether a page kept them (a resume) or made
#: new ones (a rejoin, which would also go live).
COUNT_PCS = """(() => {
  const Native = window.RTCPeerConnection;
  window.pcsMade = 0;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.pcsMade += 1; }
  };
})();"""


async def resume_after_restart(tmp_path: Path, redis_url: str, browser: Any, *,
                               grace: float, down_for_attempts: int) -> None:
    """A live call in two pages; the service killed, started again once each page has
    made `down_for_attempts` sockets in all; both pages must resume (see the test)."""
    api_key = uuid.uuid4().hex
    async with run_mediaserver(recordings_root=tmp_path / "recordings") as (kms_url, _), \
            run_receiver(SECRET) as receiver, \
            node(tmp_path, redis_url, kms_url, receiver.url, api_key) as n:
        n.env["TELEMED_CALLS_REJOIN_GRACE"] = str(grace)
        await n.start()
        created = await create_call(n, api_key)
        tokens = {p["id"]: p["token"] for p in created["participants"]}
        pages = {pid: await open_call(browser, f"{n.url}/join/{tokens[pid]}", pid,
                                      init_script=KEEP_SOCKETS + COUNT_PCS)
                 for pid in ("pat", "doc")}
        for page in pages.values():
            await page.click("#join-button")
        for page in pages.values():
            await page.wait_for_selector(LIVE, timeout=scaled(30) * 1000)
        made = {pid: await page.evaluate("window.pcsMade") for pid, page in pages.items()}

        await n.kill()
        for page in pages.values():
            await page.wait_for_selector("body[data-call-state=reconnecting]",
                                         timeout=scaled(10) * 1000)
        for page in pages.values():
            # Each failed attempt is a new socket: the page's own clock, not ours.
            await wait_js(page, f"window.sockets.length >= {down_for_attempts}",
                          timeout=scaled(60) * 1000)
        await n.start()
        for pid, page in pages.items():
            await page.wait_for_selector(LIVE, timeout=scaled(30) * 1000)
            await assert_video_advances(page)
            assert await page.evaluate("window.pcsMade") == made[pid], "peers were rebuilt"
            states = await page.evaluate("window.callStates")
            assert "failed" not in states and "over" not in states, (pid, states)
            assert await page.is_hidden("#outcome"), pid

        body = await call_state(n, api_key, created["id"])
        assert body["state"] == "live"
        events = [(e["event"], e.get("participant")) for e in body["timeline"]]
        for pid in ("pat", "doc"):
            assert ("resumed", pid) in events, events
            assert ("rejoined", pid) not in events, events
        await pages["doc"].click("#end-all")
        for page in pages.values():
            await page.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)
        assert (await call_state(n, api_key, created["id"]))["state"] == "ended"


@pytest.mark.timeout(scaled(150))
async def test_pages_wait_out_a_restart_longer_than_the_rejoin_grace(
        tmp_path: Path, redis_server: RedisServer, browser: Any) -> None:
    """The service is SIGKILLed and stays down longer than the rejoin grace (6 s; the
    pages' sixth socket comes about 7.5 s after the drop): the pages keep trying while it
    cannot be reached, and once it is back both resume: live again, no new peer
    connection, no failure shown, the other's picture advancing, `resumed` (not
    `rejoined`) on the timeline for both; the doctor then ends the call normally."""
    await resume_after_restart(tmp_path, redis_server.url, browser, grace=6,
                               down_for_attempts=6)
