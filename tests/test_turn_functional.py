"""TURN leases against a real coturn on loopback, the Redis-backed pool, reTurn's users file,
and a call whose peers may only use relays."""

from __future__ import annotations

import asyncio
import hashlib
import os
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

from signaling.call import CallKind, CallState
from tests.helpers import scaled
from tests.hub_fixtures import CallClient, ProtocolError, run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.services import RedisServer, TurnServer, run_turnserver
from turn.lease import TurnExhausted, TurnLease
from turn.pool import TurnPool
from turn.providers.coturn import CoturnRedisUserDb, CoturnSharedSecret, user_key
from turn.providers.return_users import ReturnUsersFile, parse_line


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


@pytest.fixture
def userdb_turn(tmp_path: Path, redis_server: RedisServer) -> Iterator[TurnServer]:
    with run_turnserver(tmp_path / "turn-userdb",
                        redis_userdb=f"ip=127.0.0.1 dbname=0 port={redis_server.port}") as t:
        yield t


async def test_redis_userdb_leases_allocate_and_a_returned_one_is_refused(
    userdb_turn: TurnServer, redis_client: aioredis.Redis
) -> None:
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

    async def revoke(self, lease: TurnLease) -> None:
        self.revoked.append(lease.username)


async def test_two_nodes_never_hand_out_one_slot_twice_and_report_exhaustion(
    redis_client: aioredis.Redis
) -> None:
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
    tmp_path: Path
) -> None:
    """reTurn itself cannot be installed on these machines (no Debian package): this checks
    the file it reads, how it is rewritten, and the reload signal, not reTurn's behaviour."""
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
    users = tmp_path / "users.txt"
    provider = ReturnUsersFile(users, "telemed.test", ("turn:10.0.0.5:3478",), size=3,
                               pid_file=pid_file)
    try:
        provider.write()
        first_inode = users.stat().st_ino
        lines = [parse_line(line) for line in users.read_text().splitlines()]
        assert [(u, r, s) for u, _, r, s in lines] == [
            (f"tm{i:04d}", "telemed.test", "refused") for i in range(3)]
        assert stat.S_IMODE(users.stat().st_mode) == 0o600

        lease = await provider.issue("call-9", "pat-9", ttl=60, now=0, slot=1)
        login, hashed, realm, state = parse_line(users.read_text().splitlines()[1])
        assert (login, state) == (lease.username, "authorized")
        assert hashed == hashlib.md5(
            f"{login}:{realm}:{lease.credential}".encode()).hexdigest()
        assert lease.credential not in users.read_text()
        assert users.stat().st_ino != first_inode  # replaced by rename, never edited in place
        assert [n for n in os.listdir(tmp_path) if n.startswith(".users-")] == []

        await provider.revoke(lease)
        login, hashed_after, _, state = parse_line(users.read_text().splitlines()[1])
        assert state == "refused" and hashed_after != hashed  # the password was rotated
        # One reload per rewrite: the initial write, the lease, the return.
        heard = [await asyncio.wait_for(watcher.stdout.readline(), 5) for _ in range(3)]
        assert heard == [b"reload\n"] * 3
    finally:
        watcher.send_signal(signal.SIGTERM)
        await watcher.wait()
    with pytest.raises(TurnExhausted):
        await provider.issue("c", "p", ttl=60, now=0, slot=3)


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
    tmp_path: Path, redis_server: RedisServer, lan_turn: TurnServer
) -> None:
    turn_server = lan_turn
    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "2"}
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


def _selected_local_type(pc: RTCPeerConnection) -> str:
    transport = pc.getTransceivers()[0].sender.transport.transport
    connection = transport.iceGatherer._connection  # aiortc keeps the aioice Connection here
    pair = connection._nominated.get(1)
    assert pair is not None, "no nominated candidate pair"
    return str(pair.local_candidate.type)


async def test_pool_usage_is_visible_without_credentials(
    tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer
) -> None:
    import aiohttp

    from tests.hub_fixtures import API_KEY

    env = {"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_POOL_SIZE": "7"}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env, turn_urls=(turn_server.url,),
                           turn_secrets=(turn_server.secret,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        client = CallClient(service, service.token(call.id, "p"))
        try:
            await client.connect()
            joined = await client.join()
            async with aiohttp.ClientSession() as http, http.get(
                    f"{service.url}/api/v1/turn",
                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                usage = await r.json()
        finally:
            await client.close()
    assert (usage["size"], usage["inUse"], usage["issued"]) == (7, 1, 1)
    assert usage["leases"][0]["call"] == call.id
    assert joined["iceServers"][0]["credential"] not in str(usage)
