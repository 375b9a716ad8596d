"""Serve fixtures: the routing sets and a tier-1 classifier, built once per session."""

import pytest


@pytest.fixture(scope="session")
def routing_sets():
    """routing_train and eval_routing of the default task-set sizes, seed 0."""
    from mortgagellm.config import TaskSetsConfig
    from mortgagellm.datasets.tasks import build_task_sets

    sets = build_task_sets(TaskSetsConfig(), 0)
    return {"train": sets["routing_train"], "eval": sets["eval_routing"]}


@pytest.fixture(scope="session")
def tier1(routing_sets):
    """Tier 1 trained on routing_train (the serve.router defaults)."""
    from mortgagellm.serve.routing import train_tier1

    train = routing_sets["train"]
    return train_tier1([r["request"] for r in train], [r["route"] for r in train], 120)
