"""How many documents of the demo corpus clean to a different text since ftfy and selectolax
replaced the hand-written mojibake inversion and HTML regexes.

Run: .venv/bin/python benchmarks/cleaning_changes.py [configs/cpu-demo.yaml]

Reads every unit the corpus stage reads for the recipe (regulations and generated shards, no
Ray), validates each record, and normalises its text with the current transforms and with the
replaced code (tests/reference/legacy.py). Prints the count of changed texts per source and
which step changed (mojibake repair, HTML), a few examples, and the changed fraction last.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mortgagellm.config import load_recipe  # noqa: E402
from mortgagellm.datasets import readers, transforms  # noqa: E402
from mortgagellm.datasets.splits import purpose_seed  # noqa: E402
from tests.reference import legacy  # noqa: E402


def main(config: str = "configs/cpu-demo.yaml") -> None:
    recipe = load_recipe(config)
    cfg = recipe.corpus
    units = readers.plan_units(cfg.synthetic_docs, cfg.synthetic_shards,
                               purpose_seed(recipe.run.seed, "corpus"), cfg.regulations,
                               cfg.user_corpora, cfg.synthetic_noise)
    total, changed, steps, examples = Counter(), Counter(), Counter(), []
    new_s = old_s = 0.0
    for unit in units:
        for batch in readers.read_unit(unit, cfg.max_doc_chars, cfg.text_field, cfg.id_field):
            batch = transforms.validate(batch, cfg.max_doc_chars)
            for text, reject, source in zip(batch["text"], batch["reject"], batch["source"]):
                if reject:
                    continue
                total[source] += 1
                t = time.perf_counter()
                new = transforms.normalise({"text": [text]})["text"][0]
                new_s += time.perf_counter() - t
                t = time.perf_counter()
                old = legacy.normalise_text(text)
                old_s += time.perf_counter() - t
                if new == old:
                    continue
                changed[source] += 1
                mojibake = (text if text.isascii() else transforms.repair_mojibake(text)) != \
                    (text if text.isascii() else legacy.repair_mojibake(text))
                steps["mojibake repair" if mojibake else "HTML to text"] += 1
                if len(examples) < 5:
                    at = next(i for i, (a, b) in enumerate(zip(new, old + "\0")) if a != b)
                    examples.append((source, old[max(0, at - 30):at + 40],
                                     new[max(0, at - 30):at + 40]))
    for source in total:
        print(f"{source:12s} {changed[source]:6d} of {total[source]:6d} texts changed")
    print("changed by step:", dict(steps) or "none")
    for source, old, new in examples:
        print(f"  [{source}] old: {old!r}\n  {' ' * len(source)}   new: {new!r}")
    print(f"normalise time: new {new_s:.2f} s, old {old_s:.2f} s, new/old {new_s / old_s:.2f}")
    n, k = sum(total.values()), sum(changed.values())
    print(f"changed fraction: {k}/{n} = {k / n:.5f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
