"""Benchmark: our numpy MinHash signatures against datasketch's, on the same documents.

Run: .venv/bin/python benchmarks/minhash.py [--docs 2000] [--perm 150] [--repeats 3]

Both start from a generated document's text and end with its signature of 3-word shingles:
ours is dedupe.signatures' path (crc32 words, shingle hashes, minhash over the whole batch);
datasketch's is MinHash.update_batch of the shingle strings per document. Best of --repeats;
prints docs per second of each and the speed ratio ours / datasketch last. The corpus stage
keeps its own code only while that ratio is above 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mortgagellm.datasets import dedupe, mortgage  # noqa: E402


def ours(texts: list[str], perm: int) -> None:
    dedupe.minhash([dedupe.word_hashes(t) for t in texts], 3, perm)


def theirs(texts: list[str], perm: int) -> None:
    from datasketch import MinHash

    for text in texts:
        words = text.lower().split()
        m = MinHash(num_perm=perm)
        m.update_batch([" ".join(words[i:i + 3]).encode() for i in range(max(1, len(words) - 2))])


def best(fn, texts: list[str], perm: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(texts, perm)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--perm", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = [r["text"] for r in mortgage.generate(0, 0, args.docs, noise=False)]
    t_ours = best(ours, texts, args.perm, args.repeats)
    t_theirs = best(theirs, texts, args.perm, args.repeats)
    print(f"ours:       {args.docs / t_ours:9.0f} docs/s")
    print(f"datasketch: {args.docs / t_theirs:9.0f} docs/s")
    print(f"speed ratio ours/datasketch: {t_theirs / t_ours:.2f}")


if __name__ == "__main__":
    main()
