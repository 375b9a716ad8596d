"""The closing summary of `mortgagellm run`: one row per stage with its time, the one or two
numbers that matter and where its output is, read from the stage manifests.

Everything else a stage measured stays in its manifest.json (and the run's log file); the
terminal gets what a newcomer can read at a glance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _get(metrics: dict, path: str) -> Any:
    """metrics['a']['b'] for 'a.b'; None when any key is missing (an older manifest)."""
    for key in path.split("."):
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "?"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _bootstrap(m: dict) -> str:
    return (f"instruction fidelity base {_num(_get(m, 'base.fidelity'))} -> instruct "
            f"{_num(_get(m, 'instruct.fidelity'))} ({_num(_get(m, 'parameters'))} parameters)")


def _corpus(m: dict) -> str:
    dupes = sum(_get(m, f"documents.{k}_duplicates") or 0 for k in ("exact", "near"))
    return (f"documents kept {_num(_get(m, 'documents.kept'))}, rejected "
            f"{_num(_get(m, 'documents.rejected'))}, duplicates {_num(dupes)}; "
            f"router tier 1 {_num(_get(m, 'tier1.heldout_accuracy'))} held-out")


def _pretrain(m: dict) -> str:
    return (f"domain perplexity base {_num(_get(m, 'perplexity_base'))} -> DAPT "
            f"{_num(_get(m, 'perplexity_dapt'))}")


def _residual(m: dict) -> str:
    return (f"λ {_num(_get(m, 'scale'))}, fidelity ratio {_num(_get(m, 'fidelity_ratio'))}; "
            f"domain perplexity merged {_num(_get(m, 'domain_perplexity.merged'))} vs instruct "
            f"{_num(_get(m, 'domain_perplexity.instruct'))}")


def _sft(m: dict) -> str:
    expert, instruct = _get(m, "heldout.expert") or {}, _get(m, "heldout.instruct") or {}
    parts = [f"{task} {_num(_get(expert, f'{task}.accuracy'))} vs "
             f"{_num(_get(instruct, f'{task}.accuracy'))}" for task in ("decision", "doc_kind",
                                                                         "intent")]
    return "accuracy (expert vs instruct): " + ", ".join(parts)


def _dpo(m: dict) -> str:
    return (f"held-out reward margin {_num(_get(m, 'heldout.expert.reward_margin'))}, "
            f"QA figures right {_num(_get(m, 'heldout.expert.qa_numeric_correct'))} as written, "
            f"{_num(_get(m, 'heldout.expert.qa_numeric_grounded'))} grounded, vs instruct "
            f"{_num(_get(m, 'heldout.instruct.qa_numeric_correct'))}; answers with no made-up "
            f"figure {_num(_get(m, 'heldout.expert.qa_supported'))}")


def _evaluate(m: dict) -> str:
    routed = _get(m, "variants.routed.tasks") or {}
    return (f"routed: routing accuracy {_num(_get(routed, 'routing.accuracy.value'))}, "
            f"decision accuracy {_num(_get(routed, 'decision.accuracy.value'))}, QA token F1 "
            f"{_num(_get(routed, 'qa.token_f1.value'))}; "
            f"{len(_get(m, 'variants') or {})} variants")


HEADLINES: dict[str, Callable[[dict], str]] = {
    "bootstrap": _bootstrap, "corpus": _corpus, "pretrain": _pretrain, "residual": _residual,
    "sft": _sft, "dpo": _dpo, "evaluate": _evaluate}
"""Stage -> its headline from its manifest's metrics."""


def headline(manifest: Any) -> str:
    """The stage's one line of numbers ('' for a stage with no headline)."""
    render = HEADLINES.get(manifest.stage)
    return render(manifest.metrics) if render else ""


def stage_line(manifest: Any, skipped: bool) -> str:
    """What `run` prints as a stage ends: its time (or that it was up to date) and headline."""
    took = "up to date, skipped" if skipped else f"{manifest.duration_s:.1f} s"
    return "\n".join([f"[{manifest.stage}] {took}: {headline(manifest)}"]
                     + [f"  {name}: {entry['uri']}" for name, entry in manifest.outputs.items()])


def stage_dir(manifest: Any) -> str:
    """Where a stage's outputs are: their common folder (a stage may write several)."""
    import os

    uris = [entry["uri"] for entry in manifest.outputs.values()]
    if not uris:
        return ""
    return uris[0] if len(uris) == 1 else os.path.commonpath(uris)


def table(rows: list[tuple[Any, bool, float]], total: float | None = None) -> str:
    """The closing table: (manifest, skipped, wall seconds in this run) per stage, and the
    run's wall time (default: the stages' sum; less when stages ran side by side)."""
    numbers = [headline(manifest) for manifest, _, _ in rows]
    width = max([len("numbers"), *map(len, numbers)])  # every output path in one column
    lines = ["", f"{'stage':<10} {'time':>9}  {'numbers':<{width}}  output"]
    for (manifest, skipped, wall), text in zip(rows, numbers):
        took = "skipped" if skipped else f"{wall:.0f} s"
        lines.append(f"{manifest.stage:<10} {took:>9}  {text:<{width}}  {stage_dir(manifest)}")
    total = sum(wall for _, _, wall in rows) if total is None else total
    lines.append(f"{'total':<10} {total:>7.0f} s")
    return "\n".join(lines)
