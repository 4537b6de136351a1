"""The embedded coturn, started from the very configuration `telemed run` writes, carrying a
call whose peers may only use relays (`iceTransportPolicy: relay`), as `./dev run` does."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from signaling.call import CallKind, CallState
from telemed import embedded
from telemed.settings import load_settings
from tests.helpers import scaled
from tests.hub_fixtures import CallClient, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import (
    RedisServer,
    free_port,
    free_udp_and_tcp_port,
    require_binary,
    run_turnserver,
    stop_process,
    wait_port,
)
from tests.test_turn_functional import _selected_local_type as selected_local_type
from tests.test_web_browser_functional import open_call, timeline
from turn.providers.coturn import DENIED_PEERS


@dataclass(frozen=True)
class EmbeddedTurn:
    urls: tuple[str, ...]
    secrets: tuple[str, ...]
    conf: str


@contextlib.contextmanager
def embedded_turn(tmp_path: Path, redis_url: str) -> Iterator[EmbeddedTurn]:
    """coturn as `telemed.embedded.plan` starts it: its argv, its config file, its URLs."""
    require_binary("turnserver")
    port = free_udp_and_tcp_port()
    settings = load_settings(env={
        "TELEMED_DATA_DIR": str(tmp_path / "data"), "TELEMED_HTTP_PORT": str(free_port()),
        "TELEMED_REDIS_URL": redis_url, "TELEMED_MEDIA_KURENTO_URLS": "ws://127.0.0.1:1/k",
        "TELEMED_TURN_EMBEDDED_PORT": str(port), "TELEMED_CALLS_TAKE_OVER": "false"})
    children, endpoints = embedded.plan(settings)
    (coturn,) = children
    assert coturn.name == "coturn"
    proc = subprocess.Popen(coturn.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        conf = (settings.data_path / "turn" / "turnserver.conf").read_text()
        yield EmbeddedTurn(endpoints.turn_urls, endpoints.turn_secrets, conf)
    finally:
        stop_process(proc)


async def test_relay_only_peers_go_live_through_the_embedded_turn(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    """Relay-only aiortc peers get media through the embedded coturn: the call goes live."""
    with embedded_turn(tmp_path, redis_server.url) as turn:
        relay = embedded.host_address()
        assert relay is not None, "this test needs a non-loopback IPv4 address"
        lines = turn.conf.splitlines()
        # Relaying on this host's own address, the one exception to the denied ranges.
        assert [x for x in lines if x.startswith(("relay-ip=", "allowed-peer-ip="))] == [
            f"relay-ip={relay}", f"allowed-peer-ip={relay}"]
        assert [x.split("=", 1)[1] for x in lines if x.startswith("denied-peer-ip=")] == list(
            DENIED_PEERS)
        env = {"TELEMED_TURN_PROVIDER": "embedded", "TELEMED_TURN_POOL_SIZE": "4"}
        async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
                tmp_path, redis_server.url, (kms_url,), env=env, watchdog_timeout=15,
                turn_urls=turn.urls, turn_secrets=turn.secrets) as service:
            call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                                  ("doc-1", "D", "doctor")])
            patient = CallClient(service, service.token(call.id, "pat-1"))
            doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor"))
            patient.relay_only = doctor.relay_only = True
            try:
                await asyncio.gather(patient.connect(), doctor.connect())
                await patient.join()
                await doctor.join()
                await asyncio.gather(patient.publish(), doctor.publish())
                await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
                await doctor.wait_event("callLive", timeout=30)
                assert call.state is CallState.LIVE
                for client in (patient, doctor):
                    for pc in client.pcs.values():
                        assert selected_local_type(pc) == "relay"
            finally:
                await asyncio.gather(patient.close(), doctor.close())




@contextlib.contextmanager
def loopback_or_no_turn(tmp_path: Path, fault: str) -> Iterator[tuple[str, str]]:
    """(TURN URL, secret) of a coturn relaying on 127.0.0.1 (the embedded one before issue
    #20), or of a port where no TURN server answers."""
    if fault == "relays-dropped":
        with run_turnserver(tmp_path / "turn") as turn:
            yield f"{turn.url}?transport=udp", turn.secret
    else:
        yield f"turn:127.0.0.1:{free_udp_and_tcp_port()}?transport=udp", "s" * 32


@pytest.mark.parametrize("fault", ["relays-dropped", "turn-unreachable"])
async def test_relay_only_peers_with_no_usable_candidate_fail_with_ice_failed(
    tmp_path: Path, redis_server: RedisServer, fault: str,
) -> None:
    """A relay-only peer whose relay candidates the hub drops (loopback), or that gets none
    (its TURN server does not answer), fails the call no-media with `ICE FAILED` in the
    detail, not the GATHERING the media server still reports."""
    with loopback_or_no_turn(tmp_path, fault) as (url, secret):
        env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "4",
               "TELEMED_TURN_URLS": url, "TELEMED_TURN_SECRETS": secret}
        async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
                tmp_path, redis_server.url, (kms_url,), env=env, watchdog_timeout=3,
                turn_urls=(url,), turn_secrets=(secret,)) as service:
            call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                                  ("doc-1", "D", "doctor")])
            patient = CallClient(service, service.token(call.id, "pat-1"))
            patient.relay_only = True
            try:
                await patient.connect()
                await patient.join()
                await patient.publish()
                failed = await patient.wait_event("callFailed", timeout=20)
            finally:
                await patient.close()
            dropped = {r for e in call.timeline.as_list() if e["event"] == "candidates-dropped"
                       for r in e["reasons"]}
    assert dropped == ({"loopback"} if fault == "relays-dropped" else set()), dropped
    assert failed["reason"] == "no-media"
    assert str(failed["detail"]).endswith("(direction from-browser, ICE FAILED)"), failed


async def test_a_browser_that_reports_its_ice_failed_fails_the_call_with_ice_failed(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    """A trickling browser whose ICE gave up (`clientEvent pcFailed`) while the media server
    still checks gets `ICE FAILED` in the detail; a report naming no endpoint is ignored."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,), watchdog_timeout=3) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        patient = CallClient(service, service.token(call.id, "pat-1"))
        # No candidates and no end of them: the media server keeps waiting (CONNECTING).
        patient.withhold_candidates = patient.strip_remote_candidates = True
        try:
            await patient.connect()
            await patient.join()
            await patient.publish()
            failed_ice = service.hub.sessions[call.id].media.filter.browser.failed
            for target in ("invented", "publish"):
                await patient.request("clientEvent", event="pcFailed",
                                      data={"target": target, "what": "iceConnectionState"})
            assert failed_ice == {("pat-1", "publish")}
            failed = await patient.wait_event("callFailed", timeout=20)
        finally:
            await patient.close()
    assert failed["reason"] == "no-media"
    assert str(failed["detail"]).endswith("(direction from-browser, ICE FAILED)"), failed


#: `iceTransportPolicy: "relay"` on every peer connection the page opens, as a browser on a
#: network that lets nothing but TURN through (or one configured so) behaves.
RELAY_ONLY = """(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config, ...rest) {
    return new Native({...(config || {}), iceTransportPolicy: 'relay'}, ...rest);
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""


@pytest.mark.timeout(scaled(90))
async def test_relay_only_chromium_pages_go_live_through_the_embedded_turn(
    tmp_path: Path, redis_server: RedisServer, browser: Any,
) -> None:
    """Two Chromium pages forced to relay-only go live through the embedded coturn, each
    peer connection on a relay pair."""
    with embedded_turn(tmp_path, redis_server.url) as turn:
        env = {"TELEMED_TURN_PROVIDER": "embedded", "TELEMED_TURN_POOL_SIZE": "4"}
        async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
                tmp_path, redis_server.url, (kms_url,), env=env, watchdog_timeout=20,
                turn_urls=turn.urls, turn_secrets=turn.secrets) as service:
            call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                                  ("doc-1", "D", "doctor")])
            link = f"{service.url}/join/" + "{}"
            pages = [await open_call(browser, link.format(service.token(call.id, "pat-1")),
                                     "patient", init_script=RELAY_ONLY),
                     await open_call(browser, link.format(
                         service.token(call.id, "doc-1", role="doctor")), "doctor",
                         init_script=RELAY_ONLY)]
            for page in pages:
                await page.click("#join-button")
            for page in pages:
                await page.wait_for_selector("body[data-call-state=live]",
                                             timeout=scaled(40) * 1000)
            assert call.state is CallState.LIVE
            events = await timeline(service, call.id)
            # Every relay candidate was one the hub forwards: none on loopback, where only
            # the browsers' checks reaching the media server from 127.0.0.1 (peer-reflexive)
            # could save the call, and only while the host's address is not a denied one.
            dropped = {r for e in call.timeline.as_list() if e["event"] == "candidates-dropped"
                       for r in e["reasons"]}
            assert "loopback" not in dropped, dropped
    pairs = [e["data"] for e in events if e["event"] == "client.selectedPair"]
    assert {(e["participant"], e["data"]["target"]) for e in events
            if e["event"] == "client.selectedPair"} == {
        ("pat-1", "publish"), ("pat-1", "doc-1"), ("doc-1", "publish"), ("doc-1", "pat-1")}
    assert {p["local"] for p in pairs} == {"relay"}, pairs
