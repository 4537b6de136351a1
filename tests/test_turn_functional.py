"""TURN leases against a real coturn on loopback, the Redis-backed pool, reTurn's users file,
and a call whose peers may only use relays."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aioice import Connection, TransportPolicy
from aiortc import RTCPeerConnection
from prometheus_client.parser import text_string_to_metric_families

from signaling.call import CallKind, CallState
from telemed import cli
from telemed.logs import KeyValueFormatter
from tests.helpers import scaled
from tests.hub_fixtures import CallClient, ProtocolError, run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.services import RedisServer, TurnServer, run_turnserver
from turn.lease import (
    KMS_TURN_URL,
    KurentoTurnUrlError,
    TurnExhausted,
    TurnLease,
    kurento_turn_url,
)
from turn.pool import TurnPool
from turn.providers.coturn import CoturnRedisUserDb, CoturnSharedSecret, user_key
from turn.providers.return_users import ReturnUsersFile, generate, read


async def allocates(turn: TurnServer, lease: TurnLease) -> bool:
    """Whether coturn grants a relay allocation to these credentials (aioice, relay only)."""
    conn = Connection(ice_controlling=True, turn_server=("127.0.0.1", turn.port),
                      turn_username=lease.username, turn_password=lease.credential,
                      transport_policy=TransportPolicy.RELAY)
    try:
        await asyncio.wait_for(conn.gather_candidates(), scaled(10))
        return any(c.type == "relay" for c in conn.local_candidates)
    except (ConnectionError, TimeoutError, OSError):
        return False
    finally:
        await conn.close()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_shared_secret_leases_allocate_until_they_expire(
    turn_server: TurnServer, redis_client: aioredis.Redis
) -> None:
    """A shared-secret lease allocates on real coturn; one already expired is refused."""
    provider = CoturnSharedSecret((turn_server.secret,), (turn_server.url,))
    pool = TurnPool(redis_client, provider, size=5, ttl=600, namespace=os.urandom(4).hex())
    lease = await pool.lease("call-1", "pat-1")
    assert lease.username.endswith(":call-1:pat-1")
    assert await allocates(turn_server, lease)
    # The same credentials, already expired: coturn refuses a new allocation.
    stale = await provider.issue("call-1", "pat-1", ttl=-5, now=time.time(), slot=0)
    assert not await allocates(turn_server, stale)
    await pool.release(lease)
    assert await pool.in_use() == 0


async def test_rotated_secrets_sign_with_the_newest_and_coturn_accepts_both(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """Leases are signed with the newest secret; coturn takes both rotated ones, refuses others."""
    new, old = "new-" + os.urandom(8).hex(), "old-" + os.urandom(8).hex()
    with run_turnserver(tmp_path / "turn-rotation", secrets_=(new, old)) as turn:
        provider = CoturnSharedSecret((new, old), (turn.url,))
        lease = await provider.issue("call-r", "p", ttl=600, now=time.time(), slot=0)
        signed = base64.b64encode(hmac.new(new.encode(), lease.username.encode(),
                                           hashlib.sha1).digest()).decode()
        assert lease.credential == signed
        assert await allocates(turn, lease)
        # Credentials signed before the rotation still open allocations until they expire.
        before = await CoturnSharedSecret((old,), (turn.url,)).issue(
            "call-r", "q", ttl=600, now=time.time(), slot=0)
        assert await allocates(turn, before)
        forged = await CoturnSharedSecret(("never-configured",), (turn.url,)).issue(
            "call-r", "x", ttl=600, now=time.time(), slot=0)
        assert not await allocates(turn, forged)


async def test_held_leases_are_renewed_so_long_calls_keep_slot_and_credentials(
    userdb_turn: TurnServer, redis_client: aioredis.Redis
) -> None:
    """A held coturn-redis lease is renewed past half its life, keeping its slot and username."""
    namespace = os.urandom(4).hex()
    clock = Clock(time.time())
    provider = CoturnRedisUserDb(redis_client, userdb_turn.realm, (userdb_turn.url,))
    node = TurnPool(redis_client, provider, size=1, ttl=600, namespace=namespace, clock=clock)
    lease = await node.lease("call-long", "doc")
    key = f"turn/realm/{userdb_turn.realm}/user/{lease.username}/key"
    heard: list[TurnLease] = []
    node.on_renewed.append(heard.append)
    clock.now += 200
    assert await node.renew() == []  # more than half left: nothing to do yet
    clock.now += 200
    await redis_client.expire(key, 5)  # as if 595 of its 600 real seconds had passed
    (renewed,) = await node.renew()
    assert heard == [renewed]
    assert renewed.username == lease.username and renewed.expires == clock.now + 600
    assert await redis_client.ttl(key) > 590
    assert await allocates(userdb_turn, renewed)
    # Past the first expiry the slot is still this call's: another node finds none free.
    clock.now += 300
    other = TurnPool(redis_client, provider, size=1, ttl=600, namespace=namespace,
                     clock=clock)
    with pytest.raises(TurnExhausted):
        await other.lease("call-b", "p")
    await node.release(renewed)
    assert node.held == {}
    assert (await other.lease("call-b", "p")).call_id == "call-b"


async def test_shared_secret_renewal_signs_credentials_with_a_later_expiry(
    turn_server: TurnServer, redis_client: aioredis.Redis
) -> None:
    """Renewing a shared-secret lease signs a later expiry that coturn accepts, replacing it."""
    clock = Clock(time.time())
    provider = CoturnSharedSecret((turn_server.secret,), (turn_server.url,))
    node = TurnPool(redis_client, provider, size=1, ttl=600, namespace=os.urandom(4).hex(),
                    clock=clock)
    lease = await node.lease("call-s", "pat")
    clock.now += 400
    (renewed,) = await node.renew()
    assert int(renewed.username.split(":")[0]) == int(clock.now + 600) > lease.expires
    assert node.held[lease.key] is renewed
    assert await allocates(turn_server, renewed)
    assert [a["username"] for a in await node.active()] == [renewed.username]


@pytest.fixture
def userdb_turn(tmp_path: Path, redis_server: RedisServer) -> Iterator[TurnServer]:
    with run_turnserver(tmp_path / "turn-userdb",
                        redis_userdb=f"ip=127.0.0.1 dbname=0 port={redis_server.port}") as t:
        yield t


async def test_redis_userdb_leases_allocate_and_a_returned_one_is_refused(
    userdb_turn: TurnServer, redis_client: aioredis.Redis
) -> None:
    """A coturn-redis lease writes a user key with a TTL and allocates; once returned, refused."""
    provider = CoturnRedisUserDb(redis_client, userdb_turn.realm, (userdb_turn.url,))
    pool = TurnPool(redis_client, provider, size=5, ttl=600, namespace=os.urandom(4).hex())
    lease = await pool.lease("call-2", "doc-1")
    key = f"turn/realm/{userdb_turn.realm}/user/{lease.username}/key"
    assert (await redis_client.get(key)).decode() == user_key(
        userdb_turn.realm, lease.username, lease.credential)
    assert 0 < await redis_client.ttl(key) <= 600
    assert await allocates(userdb_turn, lease)
    await pool.release(lease)
    assert await redis_client.exists(key) == 0
    assert not await allocates(userdb_turn, lease)


class Recording:
    """A provider that records what it is asked, for pool tests (no TURN server needed)."""

    def __init__(self) -> None:
        self.revoked: list[str] = []

    async def issue(self, call_id: str, participant: str, ttl: float, now: float,
                    slot: int) -> TurnLease:
        return TurnLease(call_id, participant, f"slot-{slot}", "pw", ("turn:x",), now + ttl,
                         {"slot": slot})

    async def renew(self, lease: TurnLease, ttl: float, now: float) -> TurnLease:
        return dataclasses.replace(lease, expires=now + ttl)

    async def revoke(self, lease: TurnLease) -> None:
        self.revoked.append(lease.username)


async def test_two_nodes_never_hand_out_one_slot_twice_and_report_exhaustion(
    redis_client: aioredis.Redis
) -> None:
    """Two nodes racing for 20 slots hand out each once, the rest get TurnExhausted, slots reuse."""
    namespace = os.urandom(4).hex()
    nodes = [TurnPool(redis_client, Recording(), size=20, ttl=600, namespace=namespace)
             for _ in range(2)]
    results = await asyncio.gather(*(nodes[i % 2].lease(f"call-{i}", "p") for i in range(50)),
                                   return_exceptions=True)
    leases = [r for r in results if isinstance(r, TurnLease)]
    assert len(leases) == 20
    assert len({lease.username for lease in leases}) == 20
    assert all(isinstance(r, TurnExhausted) for r in results if not isinstance(r, TurnLease))
    await nodes[0].release(leases[0])
    again = await nodes[1].lease("call-new", "p")
    assert again.username == leases[0].username  # the returned slot is reused
    assert await nodes[0].in_use() == 20


async def test_a_crashed_holders_leases_return_after_their_ttl(
    redis_client: aioredis.Redis
) -> None:
    """A slot held by a node that died is free again once its TTL has passed."""
    namespace = os.urandom(4).hex()
    clock = Clock()
    crashed = TurnPool(redis_client, Recording(), size=1, ttl=30, namespace=namespace,
                       clock=clock)
    await crashed.lease("call-a", "p")  # and its node dies without returning it
    survivor = TurnPool(redis_client, Recording(), size=1, ttl=30, namespace=namespace,
                        clock=clock)
    with pytest.raises(TurnExhausted):
        await survivor.lease("call-b", "p")
    clock.now += 31
    lease = await survivor.lease("call-b", "p")
    assert lease.username == "slot-0"
    assert [a["call"] for a in await survivor.active()] == ["call-b"]


async def test_return_users_file_format_hashing_atomic_rewrite_and_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """reTurn itself cannot be installed on these machines (no Debian package): this checks
    the file it reads, how it is rewritten, and the reload signal, not reTurn's behaviour."""
    users = tmp_path / "users.txt"
    for key in [k for k in os.environ if k.startswith("TELEMED_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TELEMED_TURN_USERS_FILE", str(users))
    monkeypatch.setenv("TELEMED_TURN_REALM", "telemed.test")
    monkeypatch.setenv("TELEMED_TURN_POOL_SIZE", "3")
    assert cli.main(["turn-users"]) == 0
    assert "wrote 3 reTurn accounts" in capsys.readouterr().out
    assert cli.main(["turn-users"]) == 1  # never silently replaces a live pool
    assert [(a.login, a.realm, a.state) for a in read(users)] == [
        (f"tm{i:04d}", "telemed.test", "refused") for i in range(3)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", a.secret) for a in read(users))
    assert stat.S_IMODE(users.stat().st_mode) == 0o600

    # Stands in for reTurnServer: says so on stdout when it gets SIGHUP.
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import signal\n"
        "signal.signal(signal.SIGHUP, lambda *a: print('reload', flush=True))\n"
        "print('ready', flush=True)\n"
        "while True: signal.pause()\n", stdout=asyncio.subprocess.PIPE)
    assert watcher.stdout is not None
    assert await watcher.stdout.readline() == b"ready\n"
    pid_file = tmp_path / "reTurnServer.pid"
    pid_file.write_text(str(watcher.pid))
    provider = ReturnUsersFile(users, "telemed.test", ("turn:10.0.0.5:3478",), pid_file=pid_file)
    try:
        first_inode = users.stat().st_ino
        lease = await provider.issue("call-9", "pat-9", ttl=60, now=0, slot=1)
        account = read(users)[1]
        assert (account.login, account.state) == (lease.username, "authorized")
        assert account.secret == hashlib.md5(
            f"{account.login}:telemed.test:{lease.credential}".encode()).hexdigest()
        assert lease.credential not in users.read_text()
        assert users.stat().st_ino != first_inode  # replaced by rename, never edited in place
        assert [n for n in os.listdir(tmp_path) if n.startswith(".users-")] == []
        # One reload per rewrite. Each is awaited before the next rewrite: two SIGHUPs sent
        # before the watcher runs its handler arrive as one (POSIX signals do not queue).
        reload = watcher.stdout.readline
        assert await asyncio.wait_for(reload(), scaled(5)) == b"reload\n"  # the lease

        await provider.revoke(lease)
        after = read(users)[1]
        assert after.state == "refused" and after.secret != account.secret  # rotated
        assert await asyncio.wait_for(reload(), scaled(5)) == b"reload\n"  # the return
    finally:
        watcher.send_signal(signal.SIGTERM)
        await watcher.wait()
    with pytest.raises(TurnExhausted):
        await provider.issue("c", "p", ttl=60, now=0, slot=3)


async def test_return_users_file_shared_by_two_nodes_loses_no_change(tmp_path: Path) -> None:
    """Two signalling nodes on one host write one users file: every lease either made must
    be in the file, with the password each handed out (the file is the state)."""
    users = tmp_path / "users.txt"
    generate(users, "telemed.test", 24, hashed=False)
    nodes = [ReturnUsersFile(users, "telemed.test", ("turn:x",), hashed=False)
             for _ in range(2)]
    leases = await asyncio.gather(*(nodes[slot % 2].issue(f"call-{slot}", "p", ttl=60, now=0,
                                                          slot=slot) for slot in range(24)))
    accounts = {a.login: a for a in read(users)}
    assert len(accounts) == 24
    assert {(accounts[lease.username].state, accounts[lease.username].secret)
            for lease in leases} == {("authorized", lease.credential) for lease in leases}
    await asyncio.gather(*(nodes[1].revoke(lease) for lease in leases[:12]))
    assert sorted(a.state for a in read(users)) == ["authorized"] * 12 + ["refused"] * 12


@pytest.fixture
def lan_turn(tmp_path: Path) -> Iterator[TurnServer]:
    """coturn relaying from the machine's LAN address: the hub rightly drops loopback
    candidates, so relays on 127.0.0.1 would never reach the media server."""
    from aioice.ice import get_host_addresses

    addresses = get_host_addresses(use_ipv4=True, use_ipv6=False)
    assert addresses, "this test needs a non-loopback IPv4 interface"
    with run_turnserver(tmp_path / "turn-lan", relay_ip=addresses[0]) as server:
        yield server


async def test_a_call_between_relay_only_peers_goes_through_coturn_and_records(
    tmp_path: Path, redis_server: RedisServer, lan_turn: TurnServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Relay-only peers go live via coturn, the media server uses the lease, no secret is logged."""
    caplog.set_level(logging.INFO)  # DEBUG would log every STUN packet: too slow here
    turn_server = lan_turn
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "2",
           "TELEMED_TURN_URLS": f"{turn_server.url}?transport=udp",
           "TELEMED_TURN_SECRETS": turn_server.secret}
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), run_service(
            tmp_path, redis_server.url, (kms_url,), env=env,
            turn_urls=(f"{turn_server.url}?transport=udp",),
            turn_secrets=(turn_server.secret,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        patient = CallClient(service, service.token(call.id, "pat-1"))
        doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor"))
        other = service.hub.create_call(CallKind.CONSULTATION, [("x", "X", "patient"),
                                                               ("y", "Y", "doctor")])
        third = CallClient(service, service.token(other.id, "x"))
        patient.relay_only = doctor.relay_only = True
        try:
            await asyncio.gather(patient.connect(), doctor.connect(), third.connect())
            joined = await patient.join()
            assert joined["iceServers"][0]["urls"] == [f"{turn_server.url}?transport=udp"]
            joined_credential = joined["iceServers"][0]["credential"]
            await doctor.join()
            with pytest.raises(ProtocolError) as info:  # the pool of 2 is taken
                await third.join()
            assert info.value.code == "turn.exhausted"
            await asyncio.gather(patient.publish(), doctor.publish())
            await asyncio.gather(patient.subscribe("doc-1"), doctor.subscribe("pat-1"))
            await doctor.wait_event("callLive", timeout=30)
            assert call.state is CallState.LIVE
            for client in (patient, doctor):
                for pc in client.pcs.values():
                    assert _selected_local_type(pc) == "relay"
            # Each participant's endpoints on the media server carry its own lease too.
            rt = service.hub.sessions[call.id]
            for pid, entry in rt.media.participants.items():
                want = kurento_turn_url(rt.members[pid].lease)
                assert want is not None and want.startswith(rt.members[pid].lease.username + ":")
                endpoints = [entry.publisher, *entry.subscriptions.values()]
                assert len(endpoints) == 2
                for ep in endpoints:
                    assert ep is not None and await ep.invoke("getTurnUrl") == want
            await asyncio.sleep(1.0)  # a second of media for the recording checked below
            await doctor.request("end")
        finally:
            await asyncio.gather(patient.close(), doctor.close(), third.close())
        assert await service.hub.turn.in_use() == 0  # type: ignore[union-attr]
        files = sorted(service.settings.recordings_path.rglob("*.webm"))
        assert [f.name for f in files] == ["doc-1.webm", "pat-1.webm"]
        for f in files:
            info_ = await ffprobe(f)
            assert sorted(s["codec_type"] for s in info_["streams"]) == ["audio", "video"]
    check_call_logs(caplog.records, call.id, secrets_=[turn_server.secret, joined_credential])


def check_call_logs(records: list[logging.LogRecord], call_id: str, *,
                    secrets_: list[str]) -> None:
    """Every line of ours that is about the call carries its id; none carries a secret."""
    ours = [r for r in records if r.name.split(".")[0] in (
        "signaling", "kurento_ctl", "turn", "recordings", "telemed")]
    about = [r for r in ours if call_id in r.getMessage() or getattr(r, "call_id", None)]
    assert len(about) >= 5, [r.getMessage() for r in ours]
    missing = [f"{r.name}: {r.getMessage()}" for r in about
               if getattr(r, "call_id", None) != call_id
               and call_id in r.getMessage()]
    assert missing == []
    formatted = "\n".join(KeyValueFormatter().format(r) for r in records)
    assert f"call_id={call_id}" in formatted
    for secret in secrets_:
        assert secret not in formatted


def _selected_local_type(pc: RTCPeerConnection) -> str:
    transport = pc.getTransceivers()[0].sender.transport.transport
    connection = transport.iceGatherer._connection  # aiortc keeps the aioice Connection here
    pair = connection._nominated.get(1)
    assert pair is not None, "no nominated candidate pair"
    return str(pair.local_candidate.type)


async def test_joined_lists_udp_tcp_and_tls_turn_and_usage_is_visible_without_credentials(
    tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer
) -> None:
    """joined lists every TURN URL; the API and metrics show pool usage but never a credential."""
    import aiohttp

    from tests.hub_fixtures import API_KEY

    # UDP and TCP on the TURN port, TLS on 443 for networks that allow nothing else.
    urls = (f"{turn_server.url}?transport=udp", f"{turn_server.url}?transport=tcp",
            "turns:turn.telemed.test:443?transport=tcp")
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "7",
           "TELEMED_TURN_URLS": ",".join(urls), "TELEMED_TURN_SECRETS": turn_server.secret}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env, turn_urls=urls,
                           turn_secrets=(turn_server.secret,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        client = CallClient(service, service.token(call.id, "p"))
        try:
            await client.connect()
            joined = await client.join()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{service.url}/api/v1/turn",
                                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                    usage = await r.json()
                async with http.get(f"{service.url}/metrics") as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/plain; version=")
                    exposition = await r.text()
        finally:
            await client.close()
    (server,) = joined["iceServers"]
    assert server["urls"] == list(urls)
    assert (usage["size"], usage["inUse"], usage["issued"]) == (7, 1, 1)
    assert usage["leases"][0]["call"] == call.id
    assert joined["iceServers"][0]["credential"] not in str(usage)
    samples = {s.name: s.value for family in text_string_to_metric_families(exposition)
               for s in family.samples}
    assert {name: samples[name] for name in (
        "telemed_turn_pool_size", "telemed_turn_leases_in_use", "telemed_turn_leases_held",
        "telemed_turn_leases_issued_total", "telemed_turn_exhausted_total")} == {
        "telemed_turn_pool_size": 7, "telemed_turn_leases_in_use": 1,
        "telemed_turn_leases_held": 1, "telemed_turn_leases_issued_total": 1,
        "telemed_turn_exhausted_total": 0}
    assert samples["telemed_calls"] == 1
    assert joined["iceServers"][0]["credential"] not in exposition


def test_kurento_gets_the_leases_turn_server_as_an_ipv4_literal() -> None:
    """Kurento's TURN URL is the lease's first IPv4 server, UDP preferred; names alone give none."""
    def lease(*urls: str) -> TurnLease:
        return TurnLease("c", "kms", "1735000000:c:kms", "Zm9v+Yg==", urls, 0.0)

    compose_like = lease("turns:turn.hospital.local:443?transport=tcp",
                         "turn:10.0.0.5:3478?transport=tcp", "turn:10.0.0.5:3478?transport=udp")
    assert kurento_turn_url(compose_like) == \
        "1735000000:c:kms:Zm9v+Yg==@10.0.0.5:3478?transport=udp"
    assert kurento_turn_url(lease("turn:10.0.0.5:3478?transport=tcp")) == \
        "1735000000:c:kms:Zm9v+Yg==@10.0.0.5:3478?transport=tcp"
    assert kurento_turn_url(lease("turns:10.0.0.5")) == \
        "1735000000:c:kms:Zm9v+Yg==@10.0.0.5:5349?transport=tls"
    # Names and IPv6 addresses Kurento cannot take: no URL rather than a wrong one.
    assert kurento_turn_url(lease("turn:turn.hospital.local:3478", "turn:[fd00::5]:3478")) \
        is None


def test_every_kurento_turn_url_parses_back_through_kmss_own_regex() -> None:
    """Pinned to KMS 7.3's parser: user and password come back exactly as leased."""
    assert KMS_TURN_URL.pattern == (
        r"^(?P<user>.+):(?P<password>.+)@(?P<address>[0-9.]+):(?P<port>[0-9]+)"
        r"(\?transport=(?P<transport>(udp|tcp|tls)))?$")
    for urls in (("turn:10.0.0.5:3478",), ("turn:10.0.0.5:443?transport=tcp",),
                 ("turns:10.0.0.5:5349",)):
        for user, password in (("1735000000:c:kms", "Zm9v+Yg/=="), ("u", "a-b_c"),
                               ("us@er", "p")):
            lease = TurnLease("c", "kms", user, password, urls, 0.0)
            url = kurento_turn_url(lease)
            assert url is not None
            parsed = KMS_TURN_URL.match(url)
            assert parsed is not None, url
            assert (parsed["user"], parsed["password"]) == (user, password)
            assert parsed["address"] == "10.0.0.5" and parsed["transport"] in (
                "udp", "tcp", "tls")


def test_credentials_kms_would_split_differently_are_refused_loudly() -> None:
    """A ':' in the password moves part of it into the user on KMS, silently: refused."""
    for password in ("pa:ss", "a:b:c"):
        lease = TurnLease("c", "kms", "1735000000:c:kms", password,
                          ("turn:10.0.0.5:3478",), 0.0)
        with pytest.raises(KurentoTurnUrlError, match="must not contain"):
            kurento_turn_url(lease)


async def test_a_lease_returned_while_it_is_renewed_leaves_no_new_credentials(
    redis_client: aioredis.Redis
) -> None:
    """A lease returned while its renewal runs revokes the renewed credentials too; nothing held."""
    class Slow(Recording):
        """Renews with new credentials, but only once the test lets it."""

        def __init__(self) -> None:
            super().__init__()
            self.entered = asyncio.Event()
            self.go_on = asyncio.Event()

        async def renew(self, lease: TurnLease, ttl: float, now: float) -> TurnLease:
            self.entered.set()
            await self.go_on.wait()
            return dataclasses.replace(lease, username=lease.username + "-renewed")

    clock = Clock()
    provider = Slow()
    pool = TurnPool(redis_client, provider, size=2, ttl=60, namespace=os.urandom(4).hex(),
                    clock=clock)
    lease = await pool.lease("call-x", "p")
    clock.now += 40
    renewing = asyncio.create_task(pool.renew())
    await provider.entered.wait()
    await pool.release(lease)  # the participant leaves meanwhile
    provider.go_on.set()
    assert await renewing == []
    assert provider.revoked == [lease.username, lease.username + "-renewed"]
    assert pool.held == {} and pool.renewed == 0 and await pool.active() == []


async def test_service_with_coturn_redis_hands_out_users_that_allocate_until_leave(
    tmp_path: Path, redis_server: RedisServer, userdb_turn: TurnServer,
    redis_client: aioredis.Redis,
) -> None:
    """The service's coturn-redis users allocate while joined and are deleted on leave."""
    env = {"TELEMED_TURN_PROVIDER": "coturn-redis", "TELEMED_TURN_REALM": userdb_turn.realm,
           "TELEMED_TURN_URLS": userdb_turn.url,
           # coturn's user DB through a client of its own, as with a separate Redis.
           "TELEMED_TURN_REDIS_URL": redis_server.url}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env, turn_urls=(userdb_turn.url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        client = CallClient(service, service.token(call.id, "p"))
        try:
            await client.connect()
            (server,) = (await client.join())["iceServers"]
            lease = TurnLease(call.id, "p", server["username"], server["credential"],
                              (userdb_turn.url,), 0.0)
            key = f"turn/realm/{userdb_turn.realm}/user/{lease.username}/key"
            assert await redis_client.exists(key) == 1
            assert await allocates(userdb_turn, lease)
            await client.request("leave")
        finally:
            await client.close()
        assert await redis_client.exists(key) == 0
        assert not await allocates(userdb_turn, lease)


async def test_renewed_credentials_reach_the_participants_browser(
    tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer
) -> None:
    """A renewed lease's credentials are pushed to the participant as iceServers and timelined."""
    url = f"{turn_server.url}?transport=udp"
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "2",
           "TELEMED_TURN_URLS": url, "TELEMED_TURN_SECRETS": turn_server.secret}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env, turn_urls=(url,),
                           turn_secrets=(turn_server.secret,)) as service:
        pool = service.hub.turn
        assert pool is not None
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        client = CallClient(service, service.token(call.id, "p"))
        try:
            await client.connect()
            first = (await client.join())["iceServers"][0]
            later = time.time() + pool.ttl * 0.75  # past half its life: due for renewal
            pool.clock = lambda: later
            (renewed,) = await pool.renew()
            event = await client.wait_event("iceServers")
        finally:
            await client.close()
    (server,) = event["iceServers"]
    assert server["username"] == renewed.username != first["username"]
    assert server["credential"] == renewed.credential and server["urls"] == [url]
    assert int(renewed.username.split(":")[0]) > int(first["username"].split(":")[0])
    assert any(e["event"] == "turn-renewed" for e in call.timeline.as_list())
