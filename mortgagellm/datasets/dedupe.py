"""Exact and near-duplicate detection: content hashes, MinHash signatures, and the global
decision of which copy stays.

Per document (a batch transform, in parallel): a 64-bit hash of the final text, and a MinHash
signature of its word n-grams. The n-grams are taken from the text with every PII value masked
by its kind (pii.redact's `masked_text`): surrogates are drawn per document, so two copies of a
letter that differ by a word would otherwise also differ in every name and number replaced.
Signatures keep 16 bits per permutation; two unequal minima agree by chance with p = 2^-16,
which moves a Jaccard estimate by less than 0.0001.

Across the corpus (one step, on the driver): `find_duplicates` needs (order, hash, signature)
per document, 16 + 2 * num_perm bytes, about 320 MB for 1M documents at 150 permutations. The
first document in corpus order is kept; every later one with the same hash is an exact
duplicate. Near duplicates are found by LSH (bands of `rows` signature values; documents sharing
a band are candidates, with probability 1 - (1 - s^rows)^bands at Jaccard s: 25 x 6 gives 0.99
at s=0.75 and 0.004 at s=0.4) and confirmed when their signatures agree on at least `threshold`
of the permutations, so a chance band collision between two form letters is not a duplicate.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

_PRIME = np.uint64(0x100000001B3)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 16  # shingle x permutation cells per step: 512 KiB stays in cache (5x faster
# than 32 MiB steps on the 2-core benchmark machine)


def content_hash(text: str) -> int:
    """64-bit hash of a document's final text (exact-duplicate key)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole word."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def word_hashes(text: str) -> np.ndarray:
    """32-bit hashes (crc32) of the lower-cased words of a text, in order."""
    return np.fromiter((zlib.crc32(w.encode()) for w in text.lower().split()), np.uint64)


def shingles(ids: np.ndarray, size: int) -> np.ndarray:
    """64-bit hashes of every run of `size` consecutive ids (one run if there are fewer)."""
    ids = np.asarray(ids, dtype=np.uint64)
    size = max(1, min(size, len(ids)))
    h = np.zeros(len(ids) - size + 1, dtype=np.uint64)
    for j in range(size):
        h = h * _PRIME + ids[j:len(ids) - size + 1 + j] + np.uint64(1)
    return _mix(h)


def permutations(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the hash family h -> (a * h + b) >> 32, one pair per MinHash permutation."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 63, num_perm, dtype=np.uint64) | np.uint64(1)
    return a, rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)


def minhash(docs: list[np.ndarray], size: int, num_perm: int, seed: int = 0) -> np.ndarray:
    """(len(docs), num_perm) uint16 MinHash signatures of the shingles of id sequences.

    Shingles of several documents are hashed in one matrix and reduced per document with
    `np.minimum.reduceat`, so numpy, not Python, does the per-shingle work.
    """
    a, b = permutations(num_perm, seed)
    out = np.empty((len(docs), num_perm), dtype=np.uint16)
    sets = [shingles(d, size) if len(d) else np.zeros(1, np.uint64) for d in docs]
    start = 0
    while start < len(sets):
        stop, cells = start, 0
        while stop < len(sets) and (stop == start or cells + len(sets[stop]) * num_perm <= _CHUNK):
            cells += len(sets[stop]) * num_perm
            stop += 1
        flat = np.concatenate(sets[start:stop])
        offsets = np.cumsum([0] + [len(s) for s in sets[start:stop - 1]])
        values = flat[:, None] * a
        values += b
        values >>= np.uint64(48)
        out[start:stop] = np.minimum.reduceat(values.astype(np.uint16), offsets, axis=0)
        start = stop
    return out


def band_key(values: np.ndarray) -> np.ndarray:
    """(n,) uint64 LSH keys of one band: its (n, rows) signature values folded by splitmix64."""
    key = np.zeros(len(values), dtype=np.uint64)
    for column in values.T:
        key = _mix(key ^ column.astype(np.uint64))
    return key


def signatures(batch: dict, shingle_words: int, num_perm: int) -> dict:
    """Batch transform: `content_hash` of `text`, `minhash` of `masked_text`'s word shingles."""
    hashes = np.array([content_hash(t) for t in batch["text"]], dtype=np.uint64)
    sig = minhash([word_hashes(t) for t in batch["masked_text"]], shingle_words, num_perm)
    return {**batch, "content_hash": hashes, "minhash": list(sig)}


def _first_of(keys: np.ndarray) -> np.ndarray:
    """For each position, the position of the first element holding the same key."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse]


def find_duplicates(order: np.ndarray, hashes: np.ndarray, sig: np.ndarray, bands: int,
                    rows: int, threshold: float, neighbours: int = 8,
                    members: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, kind, kept position) of every duplicate, positions indexing the inputs.

    `order` ranks documents (the earliest is kept); kind is 0 for exact, 1 for near duplicates.
    Only the positions in `members` take part (default: all), so a caller can leave rejected
    rows out without copying the signatures, which at 1M documents are the largest array here.
    Within each band's buckets (sorted by order) a document is compared with up to
    `neighbours` earlier members, and is a near duplicate of the first that agrees on at least
    `threshold` of the signature.
    """
    if bands * rows > sig.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, "
                         f"signatures have {sig.shape[1]}")
    members = np.arange(len(order)) if members is None else np.asarray(members)
    ranked = members[np.argsort(order[members], kind="stable")]  # input positions, by order
    first = _first_of(hashes[ranked])
    exact = first != np.arange(len(ranked))
    kept = np.where(exact, ranked[first], -1)  # per rank: input position of the kept copy
    rest = np.flatnonzero(~exact)  # ranks still in play for near duplicates
    for band in range(bands if len(rest) else 0):
        keys = band_key(sig[ranked[rest], band * rows:(band + 1) * rows])
        by_rank = np.lexsort((rest, keys))  # a bucket's members together, earliest first
        by_key, keys = rest[by_rank], keys[by_rank]
        for d in range(1, neighbours + 1):
            same = np.flatnonzero(keys[d:] == keys[:-d])
            later, earlier = by_key[same + d], by_key[same]
            open_ = kept[later] < 0
            later, earlier = later[open_], earlier[open_]
            agree = (sig[ranked[later]] == sig[ranked[earlier]]).mean(axis=1) >= threshold
            kept[later[agree]] = ranked[earlier[agree]]
    dup = np.flatnonzero(kept >= 0)
    return ranked[dup], (~exact[dup]).astype(np.int8), kept[dup]
