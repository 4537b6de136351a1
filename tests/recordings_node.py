"""One node's recordings worker as its own process, for tests of several nodes on one
Redis and one recordings volume.

`python -m tests.recordings_node REDIS_URL ROOT FOLDER CLAIM_TTL SNAPSHOT_JSON`: finalizes
the call's folder, printing `published <event>` for each webhook it sends and
`log <message>` for what its worker logs, then `lost` if another node took the call over
while it worked, else `done` (it found the call finalized when it looked again)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from recordings.catalog import Catalog
from recordings.worker import RecordingWorker


class Lost(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = self.seen or "taken over by another node" in record.getMessage()
        print("log", record.getMessage(), flush=True)  # for the test's failure message


async def main(redis_url: str, root: str, folder: str, ttl: float, snap: dict[str, Any]
               ) -> None:
    lost = Lost()
    logging.getLogger("recordings.worker").addHandler(lost)
    redis = aioredis.Redis.from_url(redis_url)

    async def publish(event: str, data: dict[str, Any], event_id: str) -> None:
        print("published", event, flush=True)

    worker = RecordingWorker(Catalog(Path(root), redis), publish, claim_ttl=ttl)
    worker.start()
    worker.submit(Path(folder), snap)
    await worker.wait(snap["id"])
    await worker.close()
    await redis.aclose()
    print("lost" if lost.seen else "done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]),
                     json.loads(sys.argv[5])))
