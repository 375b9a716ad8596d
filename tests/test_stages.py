"""The stage graph: what each stage reads (checked against the code), the waves `mortgagellm run`
runs side by side, and how a wave behaves when one of its stages fails."""

from __future__ import annotations

import ast
import threading
from types import SimpleNamespace

import pytest

from mortgagellm import manifest
from mortgagellm.stages import NEEDS, STAGES, waves

READS = {"require_manifest", "stage_manifest"}


def ancestors(stage: str) -> set[str]:
    found, todo = set(), list(NEEDS[stage])
    while todo:
        if (name := todo.pop()) not in found:
            found.add(name)
            todo += NEEDS[name]
    return found


def constants(modules: frozenset[str]) -> dict[str, ast.expr]:
    """Every module-level NAME = value of these modules (imported names resolve to them)."""
    found = {}
    for module in modules:
        tree = ast.parse(manifest._source_file(module).read_text())
        found |= {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name)}
    return found


def manifests_read(module: str, constants: dict[str, ast.expr]) -> set[str]:
    """Stage names a module may read the manifest of: the literal argument of each
    require_manifest / stage_manifest call, or, where the argument is a variable, every stage
    name the calling function and the module-level constants it uses spell out."""
    tree = ast.parse(manifest._source_file(module).read_text())

    def names(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node)
                if isinstance(n, ast.Constant) and n.value in STAGES}

    found = set()
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for call in ast.walk(func):
            if not (isinstance(call, ast.Call) and len(call.args) >= 2 and getattr(
                    call.func, "attr", getattr(call.func, "id", None)) in READS):
                continue
            arg = call.args[1]
            if isinstance(arg, ast.Constant):
                found.add(arg.value)
            else:
                found |= names(func)
                for used in ast.walk(func):
                    if isinstance(used, ast.Name) and used.id in constants:
                        found |= names(constants[used.id])
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_reads_only_manifests_of_stages_it_needs(stage):
    closure = manifest._closure(f"mortgagellm.pipelines.{stage}")
    read = set().union(*(manifests_read(m, constants(closure)) for m in closure)) - {stage}
    assert read <= ancestors(stage), (
        f"{stage} reads {sorted(read - ancestors(stage))}, which stages.NEEDS does not list: "
        "`mortgagellm run` could run them side by side")


def test_the_reader_finds_literal_and_looped_reads():
    closure = manifest._closure("mortgagellm.pipelines.evaluate")
    assert manifests_read("mortgagellm.pipelines.residual", {}) == {"bootstrap", "pretrain"}
    assert manifests_read("mortgagellm.pipelines.evaluate", constants(closure)) == {
        "bootstrap", "corpus", "pretrain", "residual", "sft", "dpo"}


def test_waves_put_the_two_experts_side_by_side_and_everything_else_in_flow_order():
    assert waves(STAGES) == [("bootstrap",), ("corpus",), ("pretrain",), ("residual",),
                             ("sft", "dpo"), ("evaluate",)]
    assert waves(("dpo", "sft", "evaluate")) == [("sft", "dpo"), ("evaluate",)]
    assert waves(("residual", "dpo")) == [("residual",), ("dpo",)]
    assert waves(("bootstrap", "evaluate")) == [("bootstrap",), ("evaluate",)]
    assert waves(()) == []


def fake_recipe(parallel: bool = True):
    return SimpleNamespace(run=SimpleNamespace(parallel_stages=parallel, output_dir="/x",
                                               local_dir="/x"), ray=None)


def stand_in(log_dir, fail: str | None = None, seconds: float = 1.0):
    """A run_stage that notes where and when each stage ran (in files: the experts run in other
    processes) and fails for `fail`."""

    def run_stage(recipe, stage, force=False):
        import os
        import time

        start = time.time()
        if stage == fail:
            raise ValueError(f"{stage}: bad task set")
        time.sleep(seconds)
        (log_dir / stage).write_text(f"{os.getpid()} {start} {time.time()} {os.getcwd()}")
        return SimpleNamespace(stage=stage)

    return run_stage


def ran(log_dir, stage):
    pid, start, end, cwd = (log_dir / stage).read_text().split()
    return int(pid), float(start), float(end), cwd


def test_run_recipe_runs_the_experts_at_once_in_their_own_processes(
        ray_cluster, monkeypatch, tmp_path):
    import os

    from mortgagellm.pipelines import recipe as pipeline

    monkeypatch.setattr(pipeline, "run_stage", stand_in(tmp_path))
    ended = []
    out = pipeline.run_recipe(fake_recipe(), first="residual",
                              on_done=lambda m, s: ended.append(m.stage))
    assert [m.stage for m in out] == ["residual", "sft", "dpo", "evaluate"]
    assert ended[0] == "residual" and ended[-1] == "evaluate"
    sft, dpo = ran(tmp_path, "sft"), ran(tmp_path, "dpo")
    assert sft[0] != dpo[0] != os.getpid() != sft[0]  # each in a process of its own
    assert max(sft[1], dpo[1]) < min(sft[2], dpo[2])  # at the same time
    assert sft[3] == dpo[3] == os.getcwd()  # where relative run paths mean the same
    assert ran(tmp_path, "residual")[2] <= min(sft[1], dpo[1])
    assert ran(tmp_path, "evaluate")[1] >= max(sft[2], dpo[2])


def test_with_parallel_stages_off_the_experts_run_one_after_the_other(monkeypatch, tmp_path):
    import os

    from mortgagellm.pipelines import recipe as pipeline

    monkeypatch.setattr(pipeline, "run_stage", stand_in(tmp_path, seconds=0.05))
    out = pipeline.run_recipe(fake_recipe(parallel=False), first="sft", last="dpo")
    assert [m.stage for m in out] == ["sft", "dpo"]
    assert ran(tmp_path, "sft")[2] <= ran(tmp_path, "dpo")[1]
    assert ran(tmp_path, "sft")[0] == os.getpid()


def test_a_failed_expert_lets_the_other_finish_then_its_error_is_raised(
        ray_cluster, monkeypatch, tmp_path):
    from mortgagellm.pipelines import recipe as pipeline

    monkeypatch.setattr(pipeline, "run_stage", stand_in(tmp_path, fail="sft"))
    ended = []
    with pytest.raises(ValueError, match="sft: bad task set"):
        pipeline.run_recipe(fake_recipe(), first="sft",
                            on_done=lambda m, s: ended.append(m.stage))
    assert ended == ["dpo"] and (tmp_path / "dpo").exists()  # dpo finished, its output stands
    assert not (tmp_path / "evaluate").exists()  # and nothing after the wave started


def test_concurrent_ray_starts_make_one_cluster(monkeypatch):
    from mortgagellm.cluster import runtime

    started = []
    state = {"up": False}
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])

    def init_ray(cfg, run_dir):
        threading.Event().wait(0.1)  # a slow start: the second caller arrives meanwhile
        started.append(run_dir)
        state["up"] = True

    monkeypatch.setattr(runtime, "init_ray", init_ray)
    callers = [threading.Thread(target=runtime.ensure_ray, args=(None, f"/run{i}"))
               for i in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(started) == 1
