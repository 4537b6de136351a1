"""Debian's `janus` for bench.janus_compare: a config folder of only what the VideoRoom
comparison needs, the process on loopback, and a small client of its HTTP API.

The API (Janus 1.x, read from janus.c and plugins/janus_videoroom.c's comments): POST
`/janus` {"janus": "create"} makes a session, POST `/janus/<session>` {"janus": "attach"}
a plugin handle, POST `/janus/<session>/<handle>` {"janus": "message", "body": ...,
"jsep": ...} a plugin request. Synchronous requests (a room's `create`) answer at once
with "success"; asynchronous ones (`join`, `publish`, `start`) answer "ack" and their
result comes later as an "event" carrying the same transaction, which a long-poll GET on
the session delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

PLUGINS = Path("/usr/lib/x86_64-linux-gnu/janus")


def write_config(folder: Path, port: int) -> Path:
    """janus.jcfg with the VideoRoom plugin and the HTTP transport only, the API on
    127.0.0.1:`port`, no STUN or TURN, logs at warnings like our server's."""
    folder.mkdir(parents=True, exist_ok=True)
    unwanted_plugins = sorted(p.name for p in (PLUGINS / "plugins").glob("*.so")
                              if "videoroom" not in p.name)
    unwanted_transports = sorted(p.name for p in (PLUGINS / "transports").glob("*.so")
                                 if "_http" not in p.name)
    main = folder / "janus.jcfg"
    main.write_text(f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{PLUGINS / 'plugins'}"
    transports_folder = "{PLUGINS / 'transports'}"
    events_folder = "{PLUGINS / 'events'}"
    loggers_folder = "{PLUGINS / 'loggers'}"
    debug_level = 3
    session_timeout = 60
}}
media: {{
    ipv6 = false
}}
nat: {{
    ignore_mdns = true
}}
plugins: {{
    disable = "{','.join(unwanted_plugins)}"
}}
transports: {{
    disable = "{','.join(unwanted_transports)}"
}}
events: {{
    broadcast = false
}}
loggers: {{
    disable = "libjanus_jsonlog.so"
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
}}
""")
    # No static rooms: the benchmark creates its own through the API.
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return main


def start(folder: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Janus as a child process, its config in `folder`, its log in `log`."""
    main = write_config(folder, port)
    return subprocess.Popen(
        ["janus", "-F", str(folder), "-C", str(main), "--disable-colors", "-L", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


class JanusError(RuntimeError):
    pass


class Janus:
    """One Janus session: handles, plugin requests, and the long-poll that brings events."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http: aiohttp.ClientSession | None = None
        self.session_id = 0
        self._tx = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._up: dict[int, asyncio.Event] = {}

    async def __aenter__(self) -> Janus:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        reply = await self._post("", {"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._keepalive())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert self.http is not None
        with contextlib.suppress(aiohttp.ClientError, JanusError, asyncio.TimeoutError):
            await self._post(f"/{self.session_id}", {"janus": "destroy"})
        await self.http.close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        body = {**body, "transaction": body.get("transaction", str(next(self._tx)))}
        async with self.http.post(self.base + path, json=body) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {reply.get('error')}")
        return reply

    async def _poll(self) -> None:
        assert self.http is not None
        url = f"{self.base}/{self.session_id}?maxev=20"
        # Janus answers a long poll after at most 30 s with a keepalive.
        timeout = aiohttp.ClientTimeout(total=45)
        while True:
            async with self.http.get(url, timeout=timeout) as response:
                events = await response.json(content_type=None)
            for event in events if isinstance(events, list) else [events]:
                if event.get("janus") == "webrtcup":
                    self._up_event(int(event["sender"])).set()
                future = self._pending.pop(str(event.get("transaction")), None)
                if future is not None and not future.done() and event.get("janus") == "event":
                    future.set_result(event)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(20)  # a period, not a wait for an event: under session_timeout
            await self._post(f"/{self.session_id}", {"janus": "keepalive"})

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> int:
        reply = await self._post(f"/{self.session_id}", {"janus": "attach", "plugin": plugin})
        return int(reply["data"]["id"])

    def _up_event(self, handle: int) -> asyncio.Event:
        return self._up.setdefault(handle, asyncio.Event())

    async def webrtc_up(self, handle: int, timeout: float = 30) -> None:
        """Until the handle's PeerConnection is up (ICE and DTLS done): Janus offers no
        subscription to a publisher before that."""
        await asyncio.wait_for(self._up_event(handle).wait(), timeout)

    async def detach(self, handle: int) -> None:
        await self._post(f"/{self.session_id}/{handle}", {"janus": "detach"})

    async def message(self, handle: int, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None,
                      timeout: float = 60) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin request: its result (plugindata.data) and the JSEP that came with it."""
        tx = str(next(self._tx))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[tx] = future
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": tx}
        if jsep is not None:
            request["jsep"] = jsep
        try:
            reply = await self._post(f"/{self.session_id}/{handle}", request)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(tx, None)
        data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return data, reply.get("jsep")


def count_mjr(path: Path) -> tuple[str, int]:
    """(kind, frames) of a Janus recording: audio frames are RTP packets (Opus: one frame
    each), video frames are distinct RTP timestamps.

    An .mjr (MJR00002) is "MJR00002", a 2-byte big-endian length and a JSON header (whose
    "t" is "a" or "v"), then per packet "MEET", a 4-byte relative time, a 2-byte length
    and the RTP packet."""
    data = path.read_bytes()
    if data[:8] != b"MJR00002":
        raise ValueError(f"{path}: not an MJR00002 file")
    size = int.from_bytes(data[8:10], "big")
    header = data[10:10 + size]
    kind = "video" if b'"t":"v"' in header.replace(b" ", b"") else "audio"
    at, packets, stamps = 10 + size, 0, set()
    while at + 10 <= len(data) and data[at:at + 4] == b"MEET":
        length = int.from_bytes(data[at + 8:at + 10], "big")
        rtp = data[at + 10:at + 10 + length]
        if len(rtp) >= 12:
            packets += 1
            stamps.add(int.from_bytes(rtp[4:8], "big"))
        at += 10 + length
    return kind, packets if kind == "audio" else len(stamps)
