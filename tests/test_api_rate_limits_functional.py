"""API rate limits keyed on the client's real address (X-Forwarded-For from trusted proxies
only) and on the credential, shared by every signalling node through Redis."""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from mis.clients import client_address, parse_networks
from telemed.settings import SettingsError, load_settings
from tests.hub_fixtures import API_KEY, JWT_SECRET, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BAD = {"Authorization": "Bearer guess"}
PROXY = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "xff", "trusted", "client"), [
    ("192.0.2.1", ["203.0.113.9"], (), "192.0.2.1"),  # no trusted proxy: header ignored
    ("192.0.2.1", ["203.0.113.9"], PROXY, "192.0.2.1"),  # peer not a trusted proxy
    ("10.0.0.2", ["203.0.113.9"], PROXY, "203.0.113.9"),
    ("10.0.0.2", ["198.51.100.1, 203.0.113.9"], PROXY, "203.0.113.9"),  # left is spoofable
    ("10.0.0.2", ["203.0.113.9, 10.1.1.1"], PROXY, "203.0.113.9"),  # two proxies
    ("10.0.0.2", ["203.0.113.9", "10.1.1.1"], PROXY, "203.0.113.9"),  # two headers
    ("10.0.0.2", ["10.9.9.9"], PROXY, "10.9.9.9"),  # all trusted: the leftmost
    ("10.0.0.2", ["garbage"], PROXY, "10.0.0.2"),
    ("10.0.0.2", [], PROXY, "10.0.0.2"),
    ("::1", ["[2001:db8::5]:4711"], PROXY, "2001:db8::5"),
    ("::ffff:10.0.0.2", ["203.0.113.9"], PROXY, "203.0.113.9"),  # v4 on a dual-stack socket
    ("10.0.0.2", ["203.0.113.9:5555"], PROXY, "203.0.113.9"),
    (None, ["203.0.113.9"], PROXY, "?"),
])
def test_the_client_address_is_the_first_untrusted_hop_from_the_right(
    peer: str | None, xff: list[str], trusted: Any, client: str
) -> None:
    """X-Forwarded-For is walked from the right through trusted proxies only."""
    assert client_address(peer, xff, trusted) == client


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    """A typo in http.trusted_proxies stops start-up, naming the setting."""
    assert load_settings(env={"TELEMED_HTTP_TRUSTED_PROXIES": "172.16.0.0/12, ::1"}
                         ).http.trusted_proxies == ("172.16.0.0/12", "::1")
    with pytest.raises(SettingsError, match=r"http\.trusted_proxies"):
        load_settings(env={"TELEMED_HTTP_TRUSTED_PROXIES": "nginx"})
    assert ipaddress.ip_network("172.16.0.0/12") in parse_networks(["172.16.0.0/12"])


@pytest.fixture
async def nodes(tmp_path: Path, redis_server: RedisServer, redis_client: Any
                ) -> AsyncIterator[tuple[Service, Service]]:
    """Two signalling nodes on one Redis, behind a proxy on loopback."""
    env = {"TELEMED_HTTP_TRUSTED_PROXIES": "127.0.0.1", "TELEMED_HTTP_API_RATE": "30"}
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path / "a", redis_server.url, (kms_url,), env=env) as a, \
            run_service(tmp_path / "b", redis_server.url, (kms_url,), env=env) as b:
        yield a, b


async def get(http: aiohttp.ClientSession, service: Service, headers: dict[str, str],
              client: str) -> tuple[int, dict[str, Any], str | None]:
    async with http.get(f"{service.url}/api/v1/calls?limit=1",
                        headers={**headers, "X-Forwarded-For": client}) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def test_guessing_locks_out_the_guesser_not_the_mis_on_any_node(
    nodes: tuple[Service, Service]
) -> None:
    """Bad credentials from one client behind the proxy, spread over two nodes, get 429
    after 20; the MIS behind the same proxy, and a good key from anywhere, still work."""
    a, b = nodes
    attacker, mis = "203.0.113.9", "198.51.100.7"
    async with aiohttp.ClientSession() as http:
        codes = [(await get(http, (a, b)[i % 2], BAD, attacker))[1]["code"]
                 for i in range(24)]
        assert codes[:20] == ["auth.invalid"] * 20 and set(codes[20:]) == {"rate.limited"}
        status, _, retry = await get(http, a, BAD, attacker)
        assert (status, retry) == (429, "60")
        # Spoofing another address to the left of the proxy's entry changes nothing.
        status, _, _ = await get(http, b, BAD, f"{mis}, {attacker}")
        assert status == 429
        assert (await get(http, b, BAD, mis))[0] == 401  # another client: its own count
        assert (await get(http, a, AUTH, mis))[0] == 200
        assert (await get(http, b, AUTH, attacker))[0] == 200  # a good key is never refused


async def test_one_credential_is_limited_across_nodes_and_others_are_not(
    nodes: tuple[Service, Service]
) -> None:
    """http.api_rate (30/min here) counts one API key's requests on both nodes together;
    the MIS's JWTs are another credential with their own count."""
    a, b = nodes
    async with aiohttp.ClientSession() as http:
        statuses = [(await get(http, (a, b)[i % 2], AUTH, "198.51.100.7"))[0]
                    for i in range(32)]
        assert statuses[:30] == [200] * 30 and statuses[30:] == [429, 429]
        _, body, retry = await get(http, a, AUTH, "192.0.2.50")  # from anywhere
        assert (body["code"], retry) == ("rate.limited", "60")
        token = jwt.encode({"iss": a.settings.auth.jwt_issuer, "aud": "telemed-api",
                            "iat": int(time.time()), "exp": int(time.time()) + 60,
                            "jti": uuid.uuid4().hex}, JWT_SECRET, algorithm="HS256")
        status, _, _ = await get(http, b, {"Authorization": f"Bearer {token}"}, "192.0.2.50")
        assert status == 200
