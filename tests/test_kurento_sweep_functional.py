"""The orphan sweep (kurento_ctl.sweep) against the embedded media server behaving like
KMS: tagged pipelines no live call owns are released, nothing else is touched, and a
pipeline left behind by a SIGKILLed process is found and released at start-up."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from kurento_ctl.client import KurentoClient
from kurento_ctl.pool import KurentoPool
from kurento_ctl.sweep import TAG_CALL, TAG_NODE, OrphanSweeper, sweep_server
from kurento_ctl.transaction import Transaction
from mediaserver.recorder import RecorderEndpointImpl
from tests.helpers import scaled, wait_until, within
from tests.kurento_fixtures import run_kms_like

ROOT = Path(__file__).resolve().parents[1]


async def tagged(client: KurentoClient, call: str | None) -> str:
    tx = Transaction(client)
    pipeline = tx.create_pipeline()
    if call is not None:
        tx.add_tag(pipeline, TAG_CALL, call)
        tx.add_tag(pipeline, TAG_NODE, "node-x")
    await tx.commit()
    return pipeline.id


async def test_the_sweep_releases_only_tagged_pipelines_of_calls_no_longer_live(
    tmp_path: Path,
) -> None:
    """Dead call: released. Live call, untagged (another application's): untouched."""
    async with run_kms_like(tmp_path) as (url, server), KurentoClient(url) as client:
        dead, live, foreign = (await tagged(client, "gone"), await tagged(client, "on"),
                               await tagged(client, None))
        asked: list[set[str]] = []

        async def live_calls(ids: set[str]) -> set[str]:
            asked.append(ids)
            return ids & {"on"}

        report = await sweep_server(url, live_calls, min_age=0)
        assert report.released == [dead]
        assert asked == [{"gone", "on"}] and report.untagged == 1
        assert dead not in server.objects
        assert live in server.objects and foreign in server.objects


async def test_a_young_pipeline_is_kept_while_its_call_may_not_be_registered_yet(
    tmp_path: Path,
) -> None:
    """A call being set up may not be live anywhere yet: `min_age` protects it."""
    async with run_kms_like(tmp_path) as (url, server), KurentoClient(url) as client:
        fresh = await tagged(client, "setting-up")
        report = await sweep_server(url, lambda ids: set(), min_age=3600)
        assert report.kept_young == [fresh] and report.released == []
        assert fresh in server.objects


async def test_the_sweep_does_not_leave_our_sessions_owning_what_it_looked_at(
    tmp_path: Path,
) -> None:
    """It reads tags on a throwaway socket: no long-lived session of ours co-owns them."""
    async with run_kms_like(tmp_path) as (url, server), KurentoClient(url) as ours:
        async with KurentoClient(url) as other:
            foreign = await tagged(other, None)
        await sweep_server(url, lambda ids: set(), min_age=0)
        session = server.sessions[ours.session_id or ""]
        assert foreign not in session.owned


DYING = textwrap.dedent("""
    import asyncio, sys
    from kurento_ctl.client import KurentoClient
    from kurento_ctl.sweep import TAG_CALL, TAG_NODE
    from kurento_ctl.transaction import Transaction

    async def main(url, uri):
        client = KurentoClient(url)
        await client.connect()
        tx = Transaction(client)
        pipeline = tx.create_pipeline()
        tx.add_tag(pipeline, TAG_CALL, "call-of-the-dead")
        tx.add_tag(pipeline, TAG_NODE, "node-dead")
        recorder = tx.create_recorder_endpoint(pipeline, uri)
        tx.record(recorder)
        await tx.commit()
        print(pipeline.id, recorder.id, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


async def test_a_pipeline_left_by_a_sigkilled_process_is_released_by_the_start_up_sweep(
    tmp_path: Path,
) -> None:
    """A real process dies mid-call; nothing adopts its call; the sweep finds its pipeline
    by tag and releases it, its recorder included."""
    async with run_kms_like(tmp_path) as (url, server):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DYING, url, (tmp_path / "dead.webm").as_uri(),
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        line = await within(proc.stdout.readline(), 20, "the doomed process's pipeline")
        pipeline_id, recorder_id = line.decode().split()
        proc.send_signal(signal.SIGKILL)
        await within(proc.wait(), 10, "the SIGKILLed process to exit")
        # The media server keeps running it: KMS frees nothing on a closed socket.
        assert isinstance(server.objects.get(recorder_id), RecorderEndpointImpl)
        pool = KurentoPool([url], health_interval=scaled(60))
        await pool.start()
        sweeper = OrphanSweeper(pool, lambda ids: set(), min_age=0, interval=scaled(60))
        try:
            await sweeper.start()
            assert [r.released for r in sweeper.reports] == [[pipeline_id]]
            assert pipeline_id not in server.objects and recorder_id not in server.objects
        finally:
            await sweeper.close()
            await pool.close()


async def test_the_periodic_sweep_releases_what_dies_after_start_up(tmp_path: Path) -> None:
    """Not only at start-up: a call that ends without releasing is caught by a later run."""
    async with run_kms_like(tmp_path) as (url, server), KurentoClient(url) as client:
        pool = KurentoPool([url], health_interval=scaled(60))
        await pool.start()
        live = {"ongoing"}
        sweeper = OrphanSweeper(pool, lambda ids: ids & live, min_age=0,
                                interval=scaled(0.1))
        try:
            await sweeper.start()
            pipeline = await tagged(client, "ongoing")
            await wait_until(lambda: len(sweeper.reports) == 1
                             and pipeline in sweeper.reports[0].tagged)
            assert pipeline in server.objects
            live.clear()  # the call ended somewhere, its pipeline left behind
            await wait_until(lambda: pipeline not in server.objects,
                             describe=lambda: [r.released for r in sweeper.reports])
        finally:
            await sweeper.close()
            await pool.close()


async def test_a_liveness_question_that_fails_releases_nothing(tmp_path: Path) -> None:
    """Redis away (the question raises): the sweep cannot tell, so it keeps everything;
    the periodic loop goes on and releases once the answer comes back."""
    async with run_kms_like(tmp_path) as (url, server), KurentoClient(url) as client:
        pipeline = await tagged(client, "maybe-over")
        answers: list[Exception | None] = [ConnectionError("redis away"),
                                           ConnectionError("redis away"), None]

        async def live(ids: set[str]) -> set[str]:
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if answer is not None:
                raise answer
            return set()

        report = await sweep_server(url, live, min_age=0)
        assert report.undecided and report.released == []
        assert pipeline in server.objects
        pool = KurentoPool([url], health_interval=scaled(60))
        await pool.start()
        sweeper = OrphanSweeper(pool, live, min_age=0, interval=scaled(0.05))
        try:
            await sweeper.start()
            assert sweeper.reports[0].undecided and pipeline in server.objects
            await wait_until(lambda: pipeline not in server.objects,
                             describe=lambda: [r.released for r in sweeper.reports])
        finally:
            await sweeper.close()
            await pool.close()
