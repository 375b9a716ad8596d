"""The recipe's stages in flow order: the one list the CLI, the job submitter, the report and the
recipe runner read (at the bottom of the package, so none of them imports pipelines for it).
"""

from __future__ import annotations

STAGES: tuple[str, ...] = ("bootstrap", "corpus", "pretrain", "residual", "sft", "dpo",
                           "evaluate")
"""The recipe's stages in flow order; each is the module mortgagellm.pipelines.<stage>."""

NEEDS: dict[str, tuple[str, ...]] = {
    "bootstrap": (),
    "corpus": ("bootstrap",),                    # the base model's tokenizer
    "pretrain": ("bootstrap", "corpus"),
    "residual": ("bootstrap", "pretrain"),
    "sft": ("bootstrap", "corpus", "residual"),  # both experts start from the merged model,
    "dpo": ("bootstrap", "corpus", "residual"),  # neither reads the other
    "evaluate": ("bootstrap", "corpus", "pretrain", "residual", "sft", "dpo"),
}
"""The stages whose manifests each stage reads (tests/test_stages.py checks it against the code):
what `waves` orders by."""


SHARED_ACROSS_SEEDS: tuple[str, ...] = ("bootstrap", "corpus")
"""The stages run.repeat_seeds share with the run: the pretrained pair and the data. Each
further seed trains and evaluates from pretrain on."""


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


def waves(stages: tuple[str, ...] | list[str]) -> list[tuple[str, ...]]:
    """The selected stages grouped into waves that can run side by side: a stage goes in the
    wave after the last one holding a selected stage it needs. Stages not selected are taken as
    done (their manifests are read as they are). In flow order within a wave.

    >>> waves(STAGES)
    [('bootstrap',), ('corpus',), ('pretrain',), ('residual',), ('sft', 'dpo'), ('evaluate',)]
    """
    level: dict[str, int] = {}
    for stage in sorted(stages, key=STAGES.index):
        level[stage] = 1 + max((level[n] for n in NEEDS[stage] if n in level), default=-1)
    last = max(level.values(), default=-1)
    return [tuple(s for s in level if level[s] == i) for i in range(last + 1)]
