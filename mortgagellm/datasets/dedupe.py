"""Exact and near-duplicate detection: content hashes, MinHash signatures, and the global
decision of which copy stays.

Per document (a batch transform, in parallel): a 64-bit hash of the final text, and a MinHash
signature of its word n-grams. The n-grams are taken from the text with every PII value masked
by its kind (pii.redact's `masked_text`): surrogates are drawn per document, so two copies of a
letter that differ by a word would otherwise also differ in every name and number replaced.
Signatures keep 16 bits per permutation; two unequal minima agree by chance with p = 2^-16,
which moves a Jaccard estimate by less than 0.0001.

Across the corpus: the first document in corpus order is kept; every later one with the same
hash is an exact duplicate. Near duplicates are found by LSH (bands of `rows` signature values;
documents sharing a band are candidates, with probability 1 - (1 - s^rows)^bands at Jaccard s:
25 x 6 gives 0.99 at s=0.75 and 0.004 at s=0.4) and confirmed when their signatures agree on at
least `threshold` of the permutations, so a chance band collision between two form letters is
not a duplicate. The rule is local: within each band's bucket (members in corpus order) a
document is compared with its `neighbours` predecessors, and it is a near duplicate of the
agreeing one with the smallest (band, distance). The copy named may itself be a duplicate
(A~B, B~C, A!~C: B names A, C names B); no connected components are needed, so each document
has at most bands x neighbours candidates wherever it is decided.

`find_duplicates` decides on one machine from (order, hash, signature) of every document,
16 + 2 * num_perm bytes each (about 320 MB for 1M documents at 150 permutations). The same
decision in pieces, each over whole hash partitions (`exact_part`, `band_rows`, `bucket_pairs`,
`attach_earlier`, `confirm_pairs`), is what `distributed_duplicates` chains as Ray Data groupbys,
so no per-document array is gathered anywhere.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_PRIME = np.uint64(0x100000001B3)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
NEIGHBOURS = 8  # earlier bucket members a document is compared with, per band
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
                    rows: int, threshold: float, neighbours: int = NEIGHBOURS,
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


# --- the same decision in pieces, each over whole hash partitions ----------------------------


def exact_part(order: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Per document, the order of the first document (by order) with its hash, or -1 for that
    first one; every document sharing a hash must be in the call."""
    idx = np.lexsort((order, hashes))
    h = hashes[idx]
    start = np.ones(len(h), bool)
    start[1:] = h[1:] != h[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(len(h)), 0))
    kept = np.empty(len(order), np.int64)
    kept[idx] = np.where(start, -1, order[idx][first])
    return kept


def band_rows(order: np.ndarray, sig: np.ndarray, bands: int, rows: int) -> dict:
    """One (order, band, key) row per document and LSH band."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, "
                         f"signatures have {sig.shape[1]}")
    keys = [band_key(sig[:, b * rows:(b + 1) * rows]) for b in range(bands)]
    return {"order": np.tile(order, bands),
            "band": np.repeat(np.arange(bands, dtype=np.int32), len(order)),
            "key": np.concatenate(keys)}


def bucket_pairs(order: np.ndarray, band: np.ndarray, key: np.ndarray, neighbours: int
                 ) -> dict:
    """Candidate pairs (later, earlier, band, d): each member of a (band, key) bucket with its
    d-th predecessor in corpus order, d <= neighbours; whole buckets must be in the call."""
    idx = np.lexsort((order, key, band))
    o, b, k = order[idx], band[idx], key[idx]
    out: dict[str, list] = {"later": [], "earlier": [], "band": [], "d": []}
    for d in range(1, neighbours + 1):
        same = np.flatnonzero((k[d:] == k[:-d]) & (b[d:] == b[:-d]))
        out["later"].append(o[same + d])
        out["earlier"].append(o[same])
        out["band"].append(b[same])
        out["d"].append(np.full(len(same), d, np.int32))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def first_per_pair(later: np.ndarray, earlier: np.ndarray, band: np.ndarray, d: np.ndarray
                   ) -> np.ndarray:
    """Positions of the pairs to keep: of the pairs joining the same two documents (in several
    bands), the one with the smallest (band, d), the only one `confirm_pairs` can pick."""
    idx = np.lexsort((d, band, earlier, later))
    first = np.ones(len(idx), bool)
    first[1:] = (later[idx][1:] != later[idx][:-1]) | (earlier[idx][1:] != earlier[idx][:-1])
    return idx[first]


def lookup(wanted: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[i] for the i with keys[i] == w, for each w in wanted (all must be there)."""
    idx = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[idx], wanted), max(len(keys) - 1, 0))
    if len(wanted) and (not len(keys) or (keys[idx][pos] != wanted).any()):
        raise ValueError("dedupe: a candidate pair names a document whose signature is not in "
                         "its partition (were rows partitioned by another key?)")
    return values[idx[pos]]


def confirm_pairs(later: np.ndarray, earlier: np.ndarray, band: np.ndarray, d: np.ndarray,
                  sig_later: np.ndarray, sig_earlier: np.ndarray, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(near duplicate, kept) orders: of each document's candidates whose signatures agree on
    at least `threshold`, the one with the smallest (band, d); all of a document's candidate
    pairs must be in the call."""
    if not len(later):
        return later, earlier
    agree = (sig_later == sig_earlier).mean(axis=1) >= threshold
    later, earlier, band, d = later[agree], earlier[agree], band[agree], d[agree]
    idx = np.lexsort((d, band, later))
    first = np.ones(len(idx), bool)
    first[1:] = later[idx][1:] != later[idx][:-1]
    return later[idx][first], earlier[idx][first]


# --- the pieces chained as Ray Data groupbys -------------------------------------------------

SIG_TYPE = pa.list_(pa.uint16())
PAIR_SCHEMA = pa.schema([("later", pa.int64()), ("earlier", pa.int64()), ("band", pa.int32()),
                         ("d", pa.int32()), ("minhash", SIG_TYPE)])
"""A candidate pair, or (band -1) a document's signature travelling with the pairs."""
DUP_SCHEMA = pa.schema([("order", pa.int64()), ("kind", pa.int8()), ("kept", pa.int64())])
"""A duplicate: kind 0 exact, 1 near; `kept` the order of the copy it names."""


def distributed_duplicates(docs: Any, bands: int, rows: int, threshold: float, neighbours: int,
                           partitions: int, num_cpus: float = 1.0) -> Any:
    """`find_duplicates` as a Ray Dataset of DUP_SCHEMA rows, from a Dataset of the documents
    taking part (columns order, content_hash, minhash): four hash-partitioned groupbys (by
    content hash; by band key; pairs by their earlier document, where the pairs joining the
    same two documents in several bands are cut to one and the earlier's signature attached;
    then by their later document, where they are confirmed).
    A partition holds about 1/partitions of the rows of its step."""
    from mortgagellm.cluster.shuffle import by_partition

    part = {"partitions": partitions, "num_cpus": num_cpus}
    firsts = by_partition(docs.select_columns(["order", "content_hash", "minhash"]),
                          "content_hash", _exact_block, **part).materialize()
    exact = firsts.map_batches(_exact_dups, batch_format="pyarrow", num_cpus=num_cpus)
    kept = firsts.map_batches(_survivors, batch_format="pyarrow", num_cpus=num_cpus)
    keys = kept.map_batches(_band_block, batch_format="pyarrow", num_cpus=num_cpus,
                            fn_kwargs={"bands": bands, "rows": rows})
    pairs = by_partition(keys, "key", _pairs_block, neighbours=neighbours, **part)

    def signatures_as(side: str) -> Any:
        return kept.map_batches(_sig_rows, batch_format="pyarrow", num_cpus=num_cpus,
                                fn_kwargs={"side": side})

    pairs = by_partition(pairs.union(signatures_as("earlier")), "earlier", _attach_block, **part)
    near = by_partition(pairs.union(signatures_as("later")), "later", _confirm_block,
                        threshold=threshold, **part)
    return exact.union(near)


def _sig(column: pa.ChunkedArray | pa.Array, n: int, width: int = 0) -> np.ndarray:
    """(n, num_perm) signatures of a list column; (0, width) when there are none."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    flat = np.concatenate([c.flatten().to_numpy() for c in chunks] + [np.zeros(0, np.uint16)])
    return flat.reshape(n, len(flat) // n) if n else np.zeros((0, width), np.uint16)


def _sig_array(sig: np.ndarray) -> pa.Array:
    offsets = np.arange(len(sig) + 1, dtype=np.int32) * sig.shape[1] if len(sig) else [0]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                    pa.array(sig.ravel(), pa.uint16()))


def _exact_block(table: pa.Table) -> pa.Table:
    kept = exact_part(table["order"].to_numpy(), table["content_hash"].to_numpy())
    return pa.table({"order": table["order"], "kept": kept, "minhash": table["minhash"]})


def _exact_dups(table: pa.Table) -> pa.Table:
    dup = table.filter(pc.greater_equal(table["kept"], 0))
    return pa.table({"order": dup["order"], "kind": np.zeros(len(dup), np.int8),
                     "kept": dup["kept"]}, schema=DUP_SCHEMA)


def _survivors(table: pa.Table) -> pa.Table:
    return table.filter(pc.less(table["kept"], 0)).select(["order", "minhash"])


def _band_block(table: pa.Table, bands: int, rows: int) -> pa.Table:
    sig = _sig(table["minhash"], len(table), bands * rows)
    return pa.table(band_rows(table["order"].to_numpy(), sig, bands, rows))


def _pairs_block(table: pa.Table, neighbours: int) -> pa.Table:
    pairs = bucket_pairs(table["order"].to_numpy(), table["band"].to_numpy(),
                         table["key"].to_numpy(), neighbours)
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(len(pairs["later"]) + 1, np.int32)),
                                     pa.array([], pa.uint16()))
    return pa.table({**pairs, "minhash": empty}, schema=PAIR_SCHEMA)


def _sig_rows(table: pa.Table, side: str) -> pa.Table:
    none = np.full(len(table), -1)
    return pa.table({"later": table["order"] if side == "later" else none,
                     "earlier": table["order"] if side == "earlier" else none,
                     "band": none.astype(np.int32), "d": none.astype(np.int32),
                     "minhash": table["minhash"]}, schema=PAIR_SCHEMA)


def _split(table: pa.Table, side: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(pairs, signature orders, signatures) of a partition holding both kinds of row."""
    is_sig = pc.less(table["band"], 0)
    sigs = table.filter(is_sig)
    return (table.filter(pc.invert(is_sig)), sigs[side].to_numpy(),
            _sig(sigs["minhash"], len(sigs)))


def _attach_block(table: pa.Table) -> pa.Table:
    pairs, orders, sig = _split(table, "earlier")
    pairs = pairs.take(first_per_pair(*(pairs[c].to_numpy() for c in ("later", "earlier",
                                                                    "band", "d"))))
    found = lookup(pairs["earlier"].to_numpy(), orders, sig)
    return pairs.set_column(pairs.schema.get_field_index("minhash"), "minhash",
                            _sig_array(found))


def _confirm_block(table: pa.Table, threshold: float) -> pa.Table:
    pairs, orders, sig = _split(table, "later")
    later = pairs["later"].to_numpy()
    sig_later = lookup(later, orders, sig)
    near, kept = confirm_pairs(later, pairs["earlier"].to_numpy(), pairs["band"].to_numpy(),
                               pairs["d"].to_numpy(), sig_later,
                               _sig(pairs["minhash"], len(pairs)).reshape(sig_later.shape),
                               threshold)
    return pa.table({"order": near, "kind": np.ones(len(near), np.int8), "kept": kept},
                    schema=DUP_SCHEMA)
