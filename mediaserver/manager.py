"""KMS's `ServerManager` (`manager_ServerManager`): server info, load figures, pipelines."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import KmsError, MediaObjectImpl, MediaPipelineImpl, Method
from mediaserver.ownership import INTERNAL_SESSION

__all__ = ["FACTORIES", "VERSION", "ServerManagerImpl"]

VERSION = "7.3.0"
FACTORIES = ("MediaPipeline", "WebRtcEndpoint", "RecorderEndpoint", "PlayerEndpoint")


class ServerManagerImpl(MediaObjectImpl):
    type_name = "ServerManager"
    events = frozenset({"Error", "ObjectCreated", "ObjectDestroyed"})

    def methods(self) -> dict[str, Method]:
        return {
            "getPipelines": Method(self._pipelines),
            "getSessions": Method(self._sessions),
            "getInfo": Method(self._info),
            "getUsedMemory": Method(self._memory),
            "getUsedCpu": Method(self._cpu, ("interval",)),
            "getCpuCount": Method(self._cpu_count),
            "getMetadata": Method(self._metadata),
        }

    async def _pipelines(self, params: dict[str, Any]) -> list[str]:
        # KMS looks every object up for its internal session "", which co-owns them all
        # from then on and stays in use: nothing is collected while anyone polls this.
        internal = self.server.ownership.session(INTERNAL_SESSION)
        for obj in list(self.server.objects.values()):
            if obj is not self:
                self.server.ownership.touch(internal, obj)
        return sorted(o.id for o in self.server.objects.values()
                      if isinstance(o, MediaPipelineImpl))

    async def _sessions(self, params: dict[str, Any]) -> list[str]:
        return sorted(self.server.sessions)

    async def _info(self, params: dict[str, Any]) -> dict[str, Any]:
        module = {"__module__": "kurento", "__type__": "ModuleInfo",
                  "generationTime": "embedded", "version": VERSION}
        return {
            "__module__": "kurento", "__type__": "ServerInfo",
            "capabilities": ["transactions"], "type": "KMS", "version": VERSION,
            "modules": [
                module | {"name": "core", "factories": ["MediaPipeline"]},
                module | {"name": "elements", "factories": list(FACTORIES[1:])},
                module | {"name": "filters", "factories": []},
            ],
        }

    async def _memory(self, params: dict[str, Any]) -> int:
        status = Path("/proc/self/status").read_text()  # noqa: ASYNC240 - procfs, no disk I/O
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def _cpu(self, params: dict[str, Any]) -> float:
        interval = params.get("interval", 1000)
        if not isinstance(interval, int) or interval < 0:
            raise KmsError(ErrorCode.MARSHALL_ERROR, "'interval' parameter should be a integer")
        start_cpu, start = time.process_time(), time.monotonic()
        await asyncio.sleep(interval / 1000)  # KMS blocks for the interval too
        elapsed = max(time.monotonic() - start, 1e-6)
        return 100.0 * (time.process_time() - start_cpu) / elapsed / (os.cpu_count() or 1)

    async def _cpu_count(self, params: dict[str, Any]) -> int:
        return os.cpu_count() or 1

    async def _metadata(self, params: dict[str, Any]) -> str:
        return ""
