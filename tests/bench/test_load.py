"""The load generator (bench.load): report math on hand-made records, workloads built from the
shipped trace excerpts, and end-to-end runs of the CLI against a real cluster (local loopback
Ray, tiny model) over gRPC and over the OpenAI HTTP front.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.load_record import RequestRecord, Status, StreamTimer
from bench.load_report import percentile, report, summarize
from bench.load_workload import WorkloadSpec, build_plan, parse_lanes, prompt_ids, prompt_words
from sim.errors import SimInputError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "sim" / "data"


def rec(i, lane="interactive", status=Status.OK, ttft=0.1, tpot=0.02, out=10, ttft_slo=0.5,
        tpot_slo=0.05, **kw) -> RequestRecord:
    return RequestRecord(i, lane, "chatbot", planned_s=float(i), sent_s=float(i), status=status,
                         e2e_s=1.0, ttft_s=ttft if status is Status.OK else None,
                         tpot_s=tpot if status is Status.OK else None,
                         output_tokens=out if status is Status.OK else 0,
                         ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, **kw)


# ── report math ─────────────────────────────────────────────────────────────────────────────

def test_percentile_interpolates_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_a_request_meets_its_slo_only_within_ttft_and_tpot():
    assert rec(0).slo_met is True
    assert rec(0, ttft=0.6).slo_met is False
    assert rec(0, tpot=0.06).slo_met is False
    assert rec(0, tpot=None).slo_met is True                 # one output token: no TPOT
    assert rec(0, status=Status.REJECTED).slo_met is False
    assert rec(0, status=Status.FAILED).slo_met is False
    assert rec(0, ttft_slo=None, tpot_slo=None).slo_met is None
    assert rec(0, status=Status.REJECTED, ttft_slo=None, tpot_slo=None).slo_met is False


def test_attainment_counts_rejected_and_failed_as_misses_but_reports_them_apart():
    records = [rec(0), rec(1), rec(2, ttft=0.9),
               rec(3, status=Status.REJECTED, retry_after_s=1.0, ttft_slo=None, tpot_slo=None),
               rec(4, status=Status.FAILED, error="timeout")]
    s = summarize(records, wall_s=2.0)
    assert (s["requests"], s["completed"], s["rejected"], s["failed"]) == (5, 3, 1, 1)
    assert s["slo_met"] == 2 and s["attainment"] == pytest.approx(2 / 5)
    assert s["goodput_rps"] == pytest.approx(1.0)          # 2 SLO-meeting requests / 2 s
    assert s["throughput_rps"] == pytest.approx(1.5)
    assert s["output_tokens"] == 30 and s["output_tokens_per_s"] == pytest.approx(15.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert s["ttft_ms"]["p99"] == pytest.approx(100 + 800 * 0.98)
    assert s["tpot_ms"]["mean"] == pytest.approx(20.0)
    assert s["first_error"] == "timeout"


def test_report_splits_lanes_and_lists_every_request():
    records = [rec(0), rec(1, lane="heavy", ttft=2.0), rec(2, lane="heavy")]
    doc = report(records, 3.0, {"x": 1})
    assert list(doc["lanes"]) == ["interactive", "heavy"]
    assert doc["lanes"]["heavy"]["attainment"] == pytest.approx(0.5)
    assert doc["lanes"]["interactive"]["attainment"] == 1.0
    assert doc["overall"]["requests"] == 3 and len(doc["requests"]) == 3
    assert doc["requests"][1]["slo_met"] is False and doc["requests"][1]["status"] == "ok"
    json.dumps(doc)                                         # JSON-ready


def test_no_slo_known_gives_null_attainment_not_zero():
    s = summarize([rec(0, ttft_slo=None, tpot_slo=None)], 1.0)
    assert s["attainment"] is None and s["goodput_rps"] is None and s["completed"] == 1


def test_stream_timer_counts_decode_time_inside_stages():
    t = StreamTimer(sent=10.0)
    t.tokens(10.5, 1, stage=0)
    t.tokens(10.7, 2, stage=0)                              # 2 intervals in 0.2 s
    t.tokens(12.0, 1, stage=1)                              # gap (tool delay + prefill) not counted
    t.tokens(12.3, 1, stage=1)                              # 1 interval in 0.3 s
    assert t.ttft_s == pytest.approx(0.5)
    assert t.tpot_s() == pytest.approx(0.5 / 3)
    http = StreamTimer(sent=0.0)
    http.tokens(1.0, 1)
    http.tokens(2.0, 1)
    assert http.tpot_s(total_tokens=11, idle_s=0.5) == pytest.approx(0.05)


# ── workloads from the shipped traces ───────────────────────────────────────────────────────

def test_trace_replay_is_cut_at_duration_and_sped_up_by_time_scale():
    spec = WorkloadSpec(trace=str(DATA / "AzureLLMInferenceTrace_conv.csv"), fmt="azure", duration_s=20.0)
    slow = build_plan(spec)
    fast = build_plan(WorkloadSpec(**{**spec.__dict__, "time_scale": 4.0}))
    assert 0 < len(slow) < len(fast)
    assert all(r.arrival_s < 20.0 for r in fast)
    assert [r.arrival_s for r in fast] == sorted(r.arrival_s for r in fast)
    assert fast[1].arrival_s == pytest.approx(slow[1].arrival_s / 4)
    assert (fast[0].prompt_tokens, fast[0].max_tokens) == (374, 44)     # the trace's first row


@pytest.mark.parametrize("name,fmt", [("vidur_splitwise_code.csv", "vidur"),
                                      ("BurstGPT_1_head400.csv", "burstgpt"),
                                      ("AzureLLMInferenceTrace_code.csv", None)])
def test_every_timed_format_loads_through_the_simulator_reader(name, fmt):
    plan = build_plan(WorkloadSpec(trace=str(DATA / name), fmt=fmt, rate=5.0, duration_s=10.0,
                                   max_requests=20))
    assert 0 < len(plan) <= 20 and plan[0].arrival_s == 0.0
    assert all(r.prompt_tokens >= 1 and r.max_tokens >= 1 for r in plan)


def test_lengths_file_and_synthetic_mix_get_generated_arrivals():
    lengths = build_plan(WorkloadSpec(trace=str(DATA / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"),
                                      rate=4.0, duration_s=10.0, length_scale=0.1, context=256,
                                      max_output_tokens=16))
    assert 20 <= len(lengths) <= 70
    assert all(r.prompt_tokens + r.max_tokens <= 256 and r.max_tokens <= 16 for r in lengths)
    syn = build_plan(WorkloadSpec(synthetic=True, rate=5.0, duration_s=4.0, input_len=100,
                                  output_len=20, len_spread=0.5, seed=3))
    assert all(50 <= r.prompt_tokens <= 150 and 10 <= r.max_tokens <= 30 for r in syn)
    assert syn == build_plan(WorkloadSpec(synthetic=True, rate=5.0, duration_s=4.0, input_len=100,
                                          output_len=20, len_spread=0.5, seed=3))
    with pytest.raises(SimInputError, match="--rate"):
        build_plan(WorkloadSpec(trace=str(DATA / "bwb_stats_llama2_tokenizer_filtered_v2.csv")))


def test_scenarios_shape_stages_and_lanes_follow_the_mix():
    plan = build_plan(WorkloadSpec(trace=str(DATA / "vidur_splitwise_code.csv"), duration_s=1e9,
                                   scenario="mixed", lanes=parse_lanes("interactive=1,heavy=1"),
                                   length_scale=0.05, context=300, max_output_tokens=8))
    kinds = {r.scenario for r in plan}
    assert kinds == {"chatbot", "coding", "summarization", "reasoning", "tool_calling"}
    for r in plan:
        assert len(r.stages) == (1 if r.scenario in ("reasoning", "tool_calling") else 0)
        total = r.prompt_tokens + r.max_tokens + sum(s.append_tokens + s.max_tokens for s in r.stages)
        assert total <= 300
    tools = [r for r in plan if r.scenario == "tool_calling"]
    assert all(r.stages[0].tool_delay_s > 0 for r in tools)
    heavy = sum(r.lane == "heavy" for r in plan) / len(plan)
    assert 0.35 < heavy < 0.65
    with pytest.raises(SimInputError, match="unknown lane"):
        parse_lanes("fast=1")


def test_prompts_are_deterministic_and_inside_the_vocabulary():
    ids = prompt_ids(50, 384, seed=1, index=7)
    assert ids == prompt_ids(50, 384, seed=1, index=7) != prompt_ids(50, 384, seed=1, index=8)
    assert all(96 <= t < 288 for t in ids)
    assert len(prompt_words(12, seed=1, index=7).split()) == 12


def test_cli_rejects_inconsistent_options():
    from bench.load import main
    assert main(["--target", "grpc://127.0.0.1:1", "--synthetic"]) == 2             # no --rate
    assert main(["--target", "ftp://x", "--synthetic", "--rate", "1"]) == 2
    assert main(["--target", "grpc://127.0.0.1:1", "--synthetic", "--rate", "1",
                 "--trace", str(DATA / "vidur_splitwise_code.csv")]) == 2


# ── end to end against a real cluster ───────────────────────────────────────────────────────

E2E_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An asyncio loop in a daemon thread (the servers live there; the CLI runs as a process)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def cluster(llama_dir):
    pytest.importorskip("ray")
    from cluster.builder import build_cluster
    from tests.ray_cluster import local_ray, tiny_cluster_config

    config = tiny_cluster_config(llama_dir)
    with local_ray("tload"):
        handle = build_cluster(config)
        try:
            yield handle
        finally:
            handle.shutdown()


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(llama_dir))


def run_cli(tmp_path: Path, target: str, *extra: str) -> tuple[dict, subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "report.json"
    args = ["--target", target, "--synthetic", "--rate", "5", "--duration", "2", "--max-requests", "10",
            "--input-len", "24", "--output-len", "6", "--len-spread", "0.5", "--lanes",
            "interactive=1,heavy=1", "--max-concurrency", "4", "--timeout", "30", "--seed", "1",
            "--json", str(out), "--plot", str(tmp_path / "plots"), "--no-progress", *extra]
    proc = subprocess.run([sys.executable, "-m", "bench.load", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=E2E_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc, args


def check_report(doc: dict, tmp_path: Path) -> None:
    assert doc["schema"] == "tandem.bench.load/1"
    overall = doc["overall"]
    assert overall["requests"] == 10 == len(doc["requests"])
    assert overall["completed"] + overall["rejected"] + overall["failed"] == 10
    assert overall["completed"] >= 8, overall["first_error"]
    assert set(doc["lanes"]) == {"interactive", "heavy"}
    for s in [*doc["lanes"].values(), overall]:
        for metric in ("ttft_ms", "tpot_ms"):
            assert set(s[metric]) == {"mean", "p50", "p90", "p99"}
        if s["completed"]:
            assert 0 < s["ttft_ms"]["p50"] <= s["ttft_ms"]["p90"] <= s["ttft_ms"]["p99"]
            assert 0 < s["tpot_ms"]["p50"] <= s["tpot_ms"]["p99"]
        assert 0 <= s["attainment"] <= 1 and s["goodput_rps"] >= 0
    assert overall["attainment"] > 0.5                      # generous SLOs (slo_scale 50)
    assert overall["output_tokens"] > 0 and overall["output_tokens_per_s"] > 0
    for r in doc["requests"]:
        if r["status"] == "ok":
            assert r["ttft_slo_s"] > 0 and r["tpot_slo_s"] > 0 and r["output_tokens"] >= 1
    for name in ("ttft_cdf.png", "tpot_cdf.png", "attainment.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_load_over_grpc_against_a_real_cluster(cluster, tokenizer, tmp_path):
    from bench.load import LoadArgs, parser
    from deploy.grpc_server import bearer_auth, serve_grpc

    loop, port = LoopThread(), free_port()
    try:
        server = loop.call(serve_grpc(cluster, tokenizer, bearer_auth({"k1": "bench"}), port=port))
        try:
            doc, proc, args = run_cli(tmp_path, f"grpc://127.0.0.1:{port}", "--api-key", "k1",
                                      "--vocab-size", "384")
            check_report(doc, tmp_path)
            assert doc["config"]["protocol"] == "grpc" and "api_key" not in doc["config"]
            assert "interactive" in proc.stdout and "heavy" in proc.stdout
            # the prompts went in as token ids: the server counted exactly the planned lengths
            plan = build_plan(LoadArgs.model_validate(vars(parser().parse_args(args))).workload())
            assert [r["lane"] for r in doc["requests"]] == [p.lane for p in plan]
            for r in doc["requests"]:
                if r["status"] == "ok":
                    assert r["prompt_tokens"] == plan[r["index"]].prompt_tokens
                    assert r["output_tokens"] == plan[r["index"]].max_tokens
        finally:
            loop.call(server.stop(1))
    finally:
        loop.stop()


def test_load_over_http_against_the_openai_front(cluster, tokenizer, tmp_path):
    uvicorn = pytest.importorskip("uvicorn")
    from deploy.auth import api_key_auth
    from deploy.metrics import ServingMetrics
    from deploy.openai_api import make_app

    app = make_app(cluster, tokenizer, ServingMetrics(cluster.info.name), api_key_auth({}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        doc, _, _ = run_cli(tmp_path, f"http://127.0.0.1:{port}", "--model", cluster.info.name)
        check_report(doc, tmp_path)
        assert doc["config"]["protocol"] == "http"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_an_unreachable_target_fails_every_request_and_exits_1(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "bench.load", "--target", f"grpc://127.0.0.1:{free_port()}",
                           "--synthetic", "--rate", "10", "--duration", "0.3", "--timeout", "3",
                           "--no-progress", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["overall"]["failed"] == doc["overall"]["requests"] > 0
    assert doc["overall"]["attainment"] is None             # no SLO reported, none given
