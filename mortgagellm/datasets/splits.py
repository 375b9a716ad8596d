"""Which generator seed each use of the synthetic corpus draws from, so held-out data is never
trained on: every purpose gets its own seed stream derived from the run's seed."""

import hashlib

from mortgagellm.datasets import mortgage

PURPOSES = ("bootstrap", "corpus", "sft", "dpo", "routing", "eval")


def purpose_seed(seed: int, purpose: str) -> int:
    """A 63-bit generator seed for (run seed, purpose); distinct purposes never share a stream."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; one of {', '.join(PURPOSES)}")
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "big") >> 1


def heldout_domain_texts(seed: int, n: int) -> list[str]:
    """n clean held-out mortgage documents (the 'eval' stream, no planted noise), for domain
    perplexity. The same (seed, n) always gives the same texts."""
    return [r["text"] for r in mortgage.generate(purpose_seed(seed, "eval"), 0, n, noise=False)]
