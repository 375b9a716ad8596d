"""benchmarks/bench.py (`make bench`) on fake results: rows with their medians, spreads and goals,
one table with a failed benchmark as a failed row, the JSON, and child processes that write
their JSON, crash or hang. No real benchmark runs here."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench"]


def train_raw(ours, base, wait):
    """What benchmarks/train.py --json writes, as far as the table reads it."""
    return {"headline": {"variant": {"kind": "ray", "zero": 0, "threads": 2},
                         "tokens_per_s": ours, "baseline_tokens_per_s": base,
                         "cpu_s_per_1k_tokens": [0.2, 0.1, 0.25],
                         "baseline_cpu_s_per_1k_tokens": [0.1, 0.1, 0.1],
                         "cpu_ratio": [0.5, 1.0, 0.4], "data_wait_fraction": wait}}


def test_ratio_median_spread_and_goal(bench):
    r = bench.summarise(bench.row("x", "docs/s", [3.0, 1.0, 2.0], [2.0, 1.0, 1.0],
                                  goal=("ratio", ">=", 1.6)))
    assert r["ratio"] == [1.5, 1.0, 2.0]
    assert r["ratio_median"] == 1.5 and r["ratio_spread"] == [1.0, 2.0]
    assert r["ours_median"] == 2.0 and r["baseline_median"] == 1.0
    assert r["met"] is False  # the median ratio decides, not the best repeat
    lower = bench.summarise(bench.row("hops", "ms", [2.0, 4.0, 3.0], [4.0, 4.0, 4.0],
                                      goal=("ratio", "<=", 1.0)))
    assert lower["ratio_median"] == 0.75 and lower["met"] is True


def test_goal_on_ours_without_baseline(bench):
    r = bench.summarise(bench.row("wait", "", [0.01, 0.2, 0.03], goal=("ours", "<=", 0.05)))
    assert r["ratio"] is None and r["ratio_median"] is None
    assert r["ours_median"] == 0.03 and r["ours_spread"] == [0.01, 0.2] and r["met"] is True
    assert bench.summarise(bench.row("info", "MB", [5.0, 7.0, 6.0]))["met"] is None


def test_rows_of_the_serving_benchmarks(bench):
    serve = {"runs": {e: {c: [{"requests_per_s": v * k, "p99_s": 0.1 * k} for v in (1, 2, 3)]
                          for c in ("c1", "c16")}
                      for e, k in (("static", 1.0), ("continuous", 2.5))}}
    throughput, p99 = map(bench.summarise, bench.rows_serve(serve))
    assert throughput["ratio"] == pytest.approx([2.5] * 3) and throughput["met"] is True
    assert p99["ratio_median"] == pytest.approx(2.5) and p99["met"] is False
    routing = {"repeats": [{"routed_p50_s": 0.030, "direct_p50_s": 0.010, "hop_p50_s": 0.010},
                           {"routed_p50_s": 0.025, "direct_p50_s": 0.010, "hop_p50_s": 0.010},
                           {"routed_p50_s": 0.040, "direct_p50_s": 0.010, "hop_p50_s": 0.020}]}
    (hops,) = map(bench.summarise, bench.rows_serve_routing(routing))
    assert hops["ratio"] == pytest.approx([2.0, 1.5, 1.5])
    assert hops["ratio_spread"] == pytest.approx([1.5, 2.0]) and hops["met"] is False
    floors = {"floor_p50_s": 0.022, "floor_echo_p50_s": 0.016, "floor_get_p50_s": 0.012}
    routing["repeats"] = [r | floors for r in routing["repeats"]]
    hops, floor, ours, body = map(bench.summarise, bench.rows_serve_routing(routing))
    assert hops["ratio"] == pytest.approx([2.0, 1.5, 1.5])  # the same headline
    assert floor["ratio"] == pytest.approx([1.2, 1.2, 0.6]) and floor["met"] is None
    assert ours["ours"] == pytest.approx([8.0, 3.0, 18.0])  # ms of routed - floor
    assert ours["ratio"] == pytest.approx([0.8, 0.3, 0.9])
    assert body["ratio"] == pytest.approx([0.4, 0.4, 0.2])


def test_a_failed_benchmark_is_a_row_and_the_rest_still_run(bench, tmp_path):
    def runner(spec):
        if spec.name == "serve":
            raise RuntimeError("exit 1: ValueError: the engines' greedy answers differ")
        if spec.name == "corpus":
            return {"plain": []}  # no "ray": reading it fails
        return train_raw([70.0, 90.0, 80.0], [100.0, 100.0, 100.0], [0.01, 0.02, 0.03])

    specs = [s for s in bench.SPECS if s.name in ("serve", "train", "corpus")]
    results = bench.run_all(specs, runner)
    assert [results[n]["status"] for n in ("corpus", "train", "serve")] == \
        ["failed", "ok", "failed"]
    assert results["corpus"]["error"] == "KeyError: 'ray'"
    text = bench.table(results)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "ours", "baseline", "ratio", "median", "[min-max]",
                                "goal", "met?"]
    train = next(line for line in lines if line.startswith("train: Ray Train"))
    assert "80 tokens/s" in train and "100 tokens/s" in train
    assert "0.80 [0.70-0.90]" in train and "ratio >= 0.9" in train and train.endswith("no")
    cpu = next(line for line in lines if "per CPU-second" in line)
    assert "0.50 [0.40-1.00]" in cpu and cpu.endswith("-")  # informational: no goal
    wait = next(line for line in lines if "data-wait" in line)
    assert "0.02 [0.01-0.03]" in wait and wait.endswith("yes")
    failed = next(line for line in lines if line.startswith("serve: FAILED"))
    assert failed.endswith("FAILED")
    assert "serve FAILED: RuntimeError: exit 1: ValueError: the engines' greedy answers " \
        "differ" in lines
    out = tmp_path / "results" / "run.json"
    bench.write_report(results, out, {"mode": "quick"})
    saved = json.loads(out.read_text())
    assert saved["mode"] == "quick" and saved["benchmarks"]["serve"]["status"] == "failed"
    assert saved["benchmarks"]["train"]["rows"][0]["ratio_median"] == pytest.approx(0.8)


def test_children_write_crash_or_hang(bench, tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(
        "import json, sys, time\n"
        "args = sys.argv[1:]\n"
        "if 'crash' in args: raise SystemExit('ValueError: bad size 0')\n"
        "if 'hang' in args: time.sleep(60)\n"
        "runs = [{'routed_p50_s': 0.02, 'direct_p50_s': 0.01, 'hop_p50_s': 0.01}] * 3\n"
        "open(args[args.index('--json') + 1], 'w').write(json.dumps({'repeats': runs}))\n")
    specs = [bench.Spec("serve_routing", str(script), [], [what], {"quick": 20})
             for what in ("ok", "crash", "hang")]
    specs[2] = bench.Spec("serve_routing", str(script), [], ["hang"], {"quick": 1})
    runner = bench.subprocess_runner("quick", 3, tmp_path)
    results = [bench.run_all([spec], runner)["serve_routing"] for spec in specs]
    assert results[0]["status"] == "ok"
    assert results[0]["rows"][0]["ratio"] == pytest.approx([1.0] * 3)
    assert results[1]["status"] == "failed" and "bad size 0" in results[1]["error"]
    assert results[2]["status"] == "failed" and results[2]["error"].startswith("TimeoutError")


def test_rows_of_the_merge_show_where_it_wrote_and_the_read_plus_write_floor(bench):
    raw = {"results": [{"model_gb": 0.47, "cache": "warm", "output": "tmpfs",
                        "read_runs_s": [0.3, 0.3, 0.4], "write_runs_s": [0.3, 0.2, 0.4],
                        "merge_runs_s": [0.6, 0.5, 1.0], "merge_rss_runs_mb": [600, 610, 620]}]}
    merge, floor, rss = map(bench.summarise, bench.rows_residual(raw))
    assert "output on tmpfs" in merge["metric"] and merge["ratio"] == pytest.approx(
        [0.5, 0.6, 0.4]) and merge["met"] is False
    assert "read + raw write" in floor["metric"] and floor["met"] is None
    assert floor["ratio"] == pytest.approx([1.0, 1.0, 0.8])  # (read + write) / merge
    assert rss["ours_median"] == 610


@pytest.fixture(scope="module")
def corpus_bench():
    spec = importlib.util.spec_from_file_location("corpus_bench",
                                                  ROOT / "benchmarks" / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scaling_fit_by_hand(corpus_bench, bench, tmp_path):
    docs = [10_000, 100_000, 1_000_000]
    runs = [{"read": d, "seconds": d / 10_000, "peak_pss_gb": 1.5,  # linear time, flat tree
             "driver_peak_rss_gb": 0.5 + d * 1e-6} for d in docs]  # + 1 GB per 1M docs
    growth = corpus_bench.fit_growth(runs)
    assert growth["time_exponent"] == pytest.approx(1.0)
    assert growth["seconds_per_1m_docs"] == pytest.approx(100.0)  # (100 - 10) s / 0.9M docs
    assert growth["minutes_at_10m_docs"] == pytest.approx(1000 / 60, abs=0.05)
    assert growth["peak_pss_mb_per_1m_docs"] == pytest.approx(0.0, abs=0.01)
    assert growth["driver_peak_rss_mb_per_1m_docs"] == pytest.approx(1024.0)
    assert growth["driver_peak_rss_gb_at_10m_docs"] == pytest.approx(10.5)
    corpus_bench.plot_scaling(runs, growth, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    k, minutes, driver, tree = map(bench.summarise, bench.rows_corpus_scaling(
        {"scale": runs, "growth": growth}))
    assert k["met"] is True and "10,000-1,000,000 docs" in k["metric"]
    assert minutes["ours_median"] == pytest.approx(100 / 60)
    assert driver["ours_median"] == pytest.approx(1024.0) and tree["met"] is None


def test_where_the_cores_idled_by_hand(corpus_bench, bench):
    """Two cores over 10 s: task a on 0-4 s, b on 2-6 s (clipped), c on 8-12 s (clipped to
    10), and a bookkeeping actor call that takes no core; the run's passes split at 5 s."""
    def task(name, start_s, seconds):
        return {"cat": f"task::{name}", "name": name, "ts": 1e9 + start_s * 1e6,
                "dur": seconds * 1e6}
    events = [task("mod.clean", 0, 4), task("mod.clean", 2, 4), task("mod.pack", 8, 4),
              task("get_reserved_resources", 1, 1), {"cat": "task:execute", "name": "x",
                                                     "ts": 1e9, "dur": 5e6}]
    profile = corpus_bench.concurrency_profile(events, 1e9, 1e9 + 10e6)
    assert profile["seconds_with_n_running"] == {0: 2.0, 1: 6.0, 2: 2.0}  # 6-8: none
    assert profile["busy_task_s"] == 10.0 and profile["mean_running_tasks"] == 1.0
    assert profile["by_task"]["mod.clean"] == {"tasks": 2, "busy_s": 8.0, "first_s": 0.0,
                                               "last_s": 6.0}
    assert profile["by_task"]["mod.pack"]["busy_s"] == 2.0  # clipped at the window's end
    passes = corpus_bench.pass_profiles(events, {"window_us": [1e9, 1e9 + 10e6],
                                                 "timings_s": {"clean_s": 5, "pack_s": 5}})
    assert passes["clean"]["seconds_with_n_running"] == {0: 0.0, 1: 3.0, 2: 2.0}
    assert passes["pack"]["seconds_with_n_running"] == {0: 2.0, 1: 3.0}
    runs = [{"docs_per_s": 10.0, "docs_per_cpu_s": 5.0, "timeline": passes}]
    rows = [bench.summarise(r) for r in bench.rows_corpus(
        {"ray": runs, "plain": [{"docs_per_s": 8.0, "docs_per_cpu_s": 6.0}]})]
    assert [r["ours_median"] for r in rows[2:]] == [1.0, 1.4, 0.6]  # 10/10, 7/5, 3/5 s
    assert "pass 1 (clean)" in rows[3]["metric"]
    assert len(bench.rows_corpus({"ray": [{"docs_per_s": 1, "docs_per_cpu_s": 1}],
                                  "plain": [{"docs_per_s": 1, "docs_per_cpu_s": 1}]})) == 2


def test_results_in_a_childs_arguments_is_the_reports_path(bench, tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "open(args[args.index('--json') + 1], 'w').write(json.dumps({'argv': args}))\n")
    spec = bench.Spec("fake", str(script), [], ["--plot", "{results}-scaling.png"])
    report = tmp_path / "results" / "2026-12-06-vm-quick.json"
    raw = bench.subprocess_runner("quick", 3, tmp_path, report)(spec)
    assert raw["argv"][:2] == ["--plot", str(tmp_path / "results" / "2026-12-06-vm-quick")
                               + "-scaling.png"]
