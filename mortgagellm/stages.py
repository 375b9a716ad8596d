"""The recipe's stages in flow order: the one list the CLI, the job submitter, the report and the
recipe runner read (at the bottom of the package, so none of them imports pipelines for it).
"""

from __future__ import annotations

STAGES: tuple[str, ...] = ("bootstrap", "corpus", "pretrain", "residual", "sft", "dpo",
                           "evaluate")
"""The recipe's stages in flow order; each is the module mortgagellm.pipelines.<stage>."""


def select(first: str | None = None, last: str | None = None) -> tuple[str, ...]:
    """The stages from `first` to `last` inclusive, in flow order."""
    for name in (first, last):
        if name is not None and name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    lo = STAGES.index(first) if first else 0
    hi = STAGES.index(last) if last else len(STAGES) - 1
    if lo > hi:
        raise ValueError(f"--from {first} comes after --to {last} in {' -> '.join(STAGES)}")
    return STAGES[lo:hi + 1]
