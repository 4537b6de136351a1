"""Each benchmark's smoke mode runs and reports its figures (benchmarks never fail on
speed; this keeps them working)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from tests.helpers import scaled


@pytest.mark.parametrize("name", ["watchdog", "turn_leases", "signalling", "call_setup",
                                  "mediaserver_call", "idle", "sentinel", "workstation"])
@pytest.mark.timeout(scaled(150))  # several processes start; the suite's 60 s is too short
async def test_benchmark_smoke_mode_reports_its_figures(name: str) -> None:
    """Each benchmark's --smoke run exits 0 printing a RESULT line of measured, non-NaN figures."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"bench.{name}", "--smoke",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(120))
    assert proc.returncode == 0, err.decode()[-2000:]
    (line,) = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["bench"] == name
    numbers = [v for v in result.values() if isinstance(v, (int, float))]
    assert numbers and all(v == v for v in numbers)  # no NaN: every figure was measured


@pytest.mark.timeout(scaled(150))  # Redis, the media server and the service, started twice
async def test_takeover_bench_smoke_run_resumes_every_call() -> None:
    """bench.takeover --smoke: 2 live calls through a SIGKILL, all adopted, resumed, none failed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.takeover", "--smoke",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(120))
    assert proc.returncode == 0, err.decode()[-2000:]
    (line,) = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["bench"] == "takeover" and result["calls"] == 2, result
    assert result["calls_failed"] == 0 and result["calls_not_adopted"] == 0, result
    assert result["resumes_refused"] == 0, result
    assert 0 < result["restart_to_ready_s"] < 60, result
    # Adopted and resumed: finite times (a call never resumed reports infinity).
    assert result["resumed_after_ready_s_max"] < 30, result
    assert result["adopted_after_ready_s_max"] < 30, result
    assert result["kill_longest_gap_s_max"] < 30, result


@pytest.mark.timeout(scaled(240))  # two hub passes, then Redis, a media server, two nodes
async def test_nodes_bench_smoke_run_relays_and_adopts_every_call() -> None:
    """bench.nodes --smoke: no message lost on one or two nodes; B adopts and resumes A's calls."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.nodes", "--smoke",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(200))
    assert proc.returncode == 0, err.decode()[-2000:]
    (line,) = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["bench"] == "nodes", result
    for name in ("one", "two"):
        assert result[f"{name}_node_msgs_per_s"] > 0, result
        assert result[f"{name}_node_lost"] == 0, result
    # Both hubs of the two-node pass worked (a relay that failed would have failed setup).
    assert result["two_node_server_cpu_cores_a"] > 0, result
    assert result["two_node_server_cpu_cores_b"] > 0, result
    assert result["ratio_two_to_one"] > 0, result
    assert result["adoption_calls"] == 2 and result["adoption_calls_failed"] == 0, result
    assert result["calls_not_adopted"] == 0 and result["resumes_refused"] == 0, result
    # Adopted, taken over and resumed: finite times (a call never adopted is infinity).
    for key in ("kill_to_owned_s_max", "kill_to_taken_over_s_max", "kill_to_resumed_s_max",
                "signalling_kill_to_taken_over_s_max"):
        assert 0 < result[key] < 30, (key, result)
    assert result["signalling_calls"] == 4, result
    assert result["signalling_calls_not_taken_over"] == 0, result


@pytest.mark.timeout(scaled(150))  # our media server and Janus, four phases of a call each
async def test_janus_compare_smoke_run_measures_both_servers() -> None:
    """bench.janus_compare --smoke: media crosses ours and Janus, both record, ratios measured."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.janus_compare", "--smoke",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(120))
    # Janus missing exits non-zero ("./dev installs it"), failing here.
    assert proc.returncode == 0, err.decode()[-2000:]
    (line,) = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["bench"] == "janus_compare" and result["streams"] == 4, result
    for name in ("ours", "janus", "ours_rec", "janus_rec"):
        assert result[f"{name}_cpu_pct"] > 0, (name, result)
        # Media crossed the server (a loaded machine delivers less, never nothing).
        assert result[f"{name}_mean_delivery"] > 0.3, (name, result)
    # Both recorders wrote: Janus's .mjr files were found and parsed, ours' files counted.
    assert result["janus_rec_worst_file_delivery"] > 0.3, result
    assert result["ours_rec_worst_file_delivery"] > 0.3, result
    for key in ("ratio_ours_to_janus", "ratio_ours_to_janus_rec"):
        assert 0 < result[key] < float("inf"), (key, result)
