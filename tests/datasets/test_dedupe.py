"""Dedupe: MinHash estimates Jaccard similarity, find_duplicates keeps the earliest copy, and on
the generator's corpus the planted duplicates are found."""

import numpy as np
import pytest

from mortgagellm.datasets import dedupe, mortgage, pii, transforms


def test_shingles_hash_every_window_and_short_inputs_as_one():
    a = dedupe.shingles(np.array([1, 2, 3, 4]), 2)
    assert len(a) == 3 and len(set(a.tolist())) == 3
    assert (dedupe.shingles(np.array([9, 1, 2, 7]), 2)[1] == a[0])  # same window, same hash
    assert len(dedupe.shingles(np.array([5]), 3)) == 1


def test_minhash_agreement_estimates_jaccard():
    # Shingle sets {0..999} and {500..1499}: Jaccard 500 / 1500 = 1/3. With size-1 shingles the
    # shingle sets are the id sets themselves.
    sig = dedupe.minhash([np.arange(1000), np.arange(500, 1500), np.arange(1000)], 1, 600)
    assert sig.shape == (3, 600) and sig.dtype == np.uint16
    assert (sig[0] == sig[2]).all()
    assert abs((sig[0] == sig[1]).mean() - 1 / 3) < 0.06


def test_find_duplicates_keeps_the_earliest_copy():
    # Documents listed out of corpus order: order 30, 10, 20, 40.
    order = np.array([30, 10, 20, 40])
    hashes = np.array([7, 7, 8, 9], dtype=np.uint64)  # 30 is an exact copy of 10
    sig = np.zeros((4, 12), np.uint16)
    sig[0] = sig[1] = np.arange(12)
    sig[2] = np.arange(100, 112)
    sig[3] = sig[2]
    sig[3, :2] = 999  # 40 agrees with 20 on 10 of 12 values: 0.83 >= 0.75 -> near duplicate
    pos, kind, kept = dedupe.find_duplicates(order, hashes, sig, bands=4, rows=3, threshold=0.75)
    assert sorted(zip(order[pos].tolist(), kind.tolist(), order[kept].tolist())) == \
        [(30, 0, 10), (40, 1, 20)]


def test_find_duplicates_ignores_rows_outside_members():
    order, hashes = np.arange(3), np.array([5, 5, 5], np.uint64)  # three exact copies
    sig = np.zeros((3, 12), np.uint16)
    pos, _, kept = dedupe.find_duplicates(order, hashes, sig, 4, 3, 0.75, members=np.array([1, 2]))
    assert pos.tolist() == [2] and kept.tolist() == [1]  # row 0 (a rejected record) takes no part


def test_find_duplicates_needs_agreement_not_only_a_shared_band():
    order = np.arange(2)
    sig = np.array([np.arange(12), np.arange(12)], np.uint16)
    sig[1, 3:] += 50  # first band equal, the rest not: 3 of 12 agree
    pos, _, _ = dedupe.find_duplicates(order, np.array([1, 2], np.uint64), sig, 4, 3, 0.75)
    assert len(pos) == 0


def test_planted_duplicates_are_found_in_the_generated_corpus():
    records = list(mortgage.generate(seed=11, shard=0, num_docs=3000))
    batch = {"text": [r["text"] for r in records], "reject": [""] * len(records),
             "snippet": [""] * len(records)}
    batch = pii.redact(transforms.normalise(transforms.validate(batch, 100_000)), "salt")
    batch = dedupe.signatures(batch, shingle_words=3, num_perm=150)
    valid = np.flatnonzero([not r for r in batch["reject"]])
    pos, kind, kept = dedupe.find_duplicates(
        valid, batch["content_hash"][valid], np.stack(batch["minhash"])[valid], 25, 6, 0.75)
    found = {records[valid[p]]["doc_id"]: records[valid[k]]["doc_id"] for p, k in zip(pos, kept)}
    planted = {r["doc_id"]: r["ground_truth"]["noise"] for r in records
               if r["ground_truth"]["noise"] in ("exact_duplicate", "near_duplicate")}
    exact = [d for d, noise in planted.items() if noise == "exact_duplicate"]
    near = [d for d, noise in planted.items() if noise == "near_duplicate"]
    assert all(d in found for d in exact)
    assert sum(d in found for d in near) >= 0.85 * len(near)
    assert all(int(d.rsplit("-", 1)[1]) > int(found[d].rsplit("-", 1)[1]) for d in found)


def test_minhash_estimates_agree_with_datasketch():
    # Pairs of 300-word texts sharing a growing share of words; true Jaccard of their 3-word
    # shingle sets from 0 to 1. Both estimators see the same shingle hashes, 150 permutations
    # (the demo's 25 bands x 6 rows): each estimate has a standard error of at most 0.041.
    from datasketch import MinHash

    rng = np.random.default_rng(0)
    true, ours, theirs = [], [], []
    for share in np.linspace(0, 1, 21):
        a = rng.integers(0, 1 << 31, 300).astype(np.uint64)
        b = a.copy()
        swap = rng.random(300) > share
        b[swap] = rng.integers(0, 1 << 31, int(swap.sum()))
        sa, sb = dedupe.shingles(a, 3), dedupe.shingles(b, 3)
        true.append(len(set(sa.tolist()) & set(sb.tolist())) /
                    len(set(sa.tolist()) | set(sb.tolist())))
        sig = dedupe.minhash([a, b], 3, 150)
        ours.append((sig[0] == sig[1]).mean())
        m = [MinHash(num_perm=150, seed=1) for _ in range(2)]
        for mh, s in zip(m, (sa, sb)):
            mh.update_batch([int(h).to_bytes(8, "little") for h in s])
        theirs.append(m[0].jaccard(m[1]))
    true, ours, theirs = map(np.array, (true, ours, theirs))
    assert true.min() == 0 and true.max() == 1 and len(np.unique(true.round(2))) > 10
    # 3.5 standard errors of a difference of two estimates (0.058): never exceeded by chance
    assert np.abs(ours - theirs).max() < 0.2
    # and ours is no worse an estimator of the truth than datasketch's
    assert np.abs(ours - true).mean() < np.abs(theirs - true).mean() + 0.02
    assert np.abs(ours - true).mean() < 0.04


def _triples(order, pos, kind, kept):
    return sorted(zip(order[pos].tolist(), kind.tolist(), order[kept].tolist()))


def _pieces(order, hashes, sig, bands, rows, threshold, partitions):
    """The distributed decision's pieces run here, each on hash partitions of its rows as the
    Ray groupbys split them: (order, kind, kept) triples."""
    from mortgagellm.cluster.shuffle import partition_of

    def parts(key):
        p = partition_of(key, partitions)
        return [np.flatnonzero(p == i) for i in range(partitions)]

    kept = np.zeros(len(order), np.int64)
    for at in parts(hashes):
        kept[at] = dedupe.exact_part(order[at], hashes[at])
    out = [(o, 0, k) for o, k in zip(order[kept >= 0].tolist(), kept[kept >= 0].tolist())]
    alive = kept < 0
    keys = dedupe.band_rows(order[alive], sig[alive], bands, rows)
    pairs = {"later": [], "earlier": [], "band": [], "d": []}
    for at in parts(keys["key"]):
        found = dedupe.bucket_pairs(keys["order"][at], keys["band"][at], keys["key"][at], 8)
        for name in pairs:
            pairs[name].append(found[name])
    pairs = {name: np.concatenate(v) for name, v in pairs.items()}
    keep = [at[dedupe.first_per_pair(*(pairs[n][at] for n in ("later", "earlier", "band", "d")))]
            for at in parts(pairs["earlier"])]
    pairs = {name: v[np.concatenate(keep)] for name, v in pairs.items()}
    sig_of = {o: s for o, s in zip(order[alive].tolist(), sig[alive])}
    for at in parts(pairs["later"]):
        later, earlier = pairs["later"][at], pairs["earlier"][at]
        sig_later = dedupe.lookup(later, order[alive], sig[alive])
        sig_earlier = np.array([sig_of[e] for e in earlier.tolist()]).reshape(sig_later.shape)
        near, named = dedupe.confirm_pairs(later, earlier, pairs["band"][at], pairs["d"][at],
                                           sig_later, sig_earlier, threshold)
        out += [(o, 1, k) for o, k in zip(near.tolist(), named.tolist())]
    return sorted(out)


def _chain():
    """A, B, C (orders 1, 2, 3) with A~B and B~C but not A~C, and D an exact copy of B."""
    a = np.arange(12, dtype=np.uint16)
    b, c = a.copy(), a.copy()
    b[[9, 10]] = 500  # B agrees with A on 10 of 12 (bands 0-2 equal)
    c[[9, 10]] = 500
    c[[6, 7]] = 600  # C agrees with B on 10 of 12 (bands 0, 1, 3), with A on 8 of 12 (0.67)
    order = np.array([3, 1, 4, 2])  # listed out of order: C, A, D, B
    return order, np.array([30, 10, 20, 20], np.uint64), np.stack([c, a, b, b])


def test_a_chain_names_the_nearest_earlier_copy_not_the_first_of_the_chain():
    order, hashes, sig = _chain()
    pos, kind, kept = dedupe.find_duplicates(order, hashes, sig, 4, 3, 0.75)
    # D is an exact copy of B; C is dropped as a near copy of B, which is itself dropped (as
    # a near copy of A): the rule is per document, not per connected component.
    expected = [(2, 1, 1), (3, 1, 2), (4, 0, 2)]
    assert _triples(order, pos, kind, kept) == expected
    for partitions in (1, 2, 5):
        assert _pieces(order, hashes, sig, 4, 3, 0.75, partitions) == expected


def planted_corpus(num_docs=3000, seed=11):
    """Generated documents with the generator's planted exact and near duplicates, plus chains
    of edits (each copy one word-swap further from its source), listed out of corpus order."""
    records = list(mortgage.generate(seed=seed, shard=0, num_docs=num_docs))
    texts = [r["text"] for r in records]
    rng = np.random.default_rng(seed)
    for source in rng.choice(len(texts), 40, replace=False).tolist():
        text = texts[source]
        for _ in range(3):
            words = text.split()
            at = rng.choice(len(words), max(1, len(words) // 25), replace=False)
            for i in at.tolist():
                words[i] = f"edit{rng.integers(1 << 30)}"
            text = " ".join(words)
            texts.append(text)
    batch = {"text": texts, "reject": [""] * len(texts), "snippet": [""] * len(texts)}
    batch = pii.redact(transforms.normalise(transforms.validate(batch, 100_000)), "salt")
    batch = dedupe.signatures(batch, shingle_words=3, num_perm=150)
    valid = np.flatnonzero([not r for r in batch["reject"]])
    shuffle = rng.permutation(len(valid))
    order = (valid[shuffle] + (7 << 32)).astype(np.int64)  # unit 7, rows listed shuffled
    return order, batch["content_hash"][valid][shuffle], np.stack(batch["minhash"])[valid][shuffle]


def test_pieces_on_hash_partitions_equal_find_duplicates_on_a_planted_corpus():
    order, hashes, sig = planted_corpus()
    expected = _triples(order, *dedupe.find_duplicates(order, hashes, sig, 25, 6, 0.75))
    kinds = [k for _, k, _ in expected]
    assert kinds.count(0) >= 20 and kinds.count(1) >= 80  # both kinds, and the chains
    assert any(kept in {o for o, _, _ in expected} for _, _, kept in expected)  # a chain
    for partitions in (1, 4, 13):
        assert _pieces(order, hashes, sig, 25, 6, 0.75, partitions) == expected


def test_first_per_pair_keeps_the_smallest_band_then_distance_of_each_pair():
    later, earlier = np.array([5, 5, 5, 5, 6]), np.array([2, 2, 3, 2, 2])
    band, d = np.array([3, 1, 0, 1, 1]), np.array([1, 4, 2, 2, 1])
    assert sorted(dedupe.first_per_pair(later, earlier, band, d).tolist()) == [2, 3, 4]


def test_band_rows_refuse_too_short_signatures():
    with pytest.raises(ValueError, match="4 bands x 3 rows need 12 permutations"):
        dedupe.band_rows(np.arange(2), np.zeros((2, 10), np.uint16), 4, 3)


@pytest.mark.integration
def test_distributed_duplicates_equal_find_duplicates(ray_cluster):
    import pyarrow as pa
    import ray

    for order, hashes, sig, bands, rows in (_chain() + (4, 3), planted_corpus(1500) + (25, 6)):
        expected = _triples(order, *dedupe.find_duplicates(order, hashes, sig, bands, rows, 0.75))
        table = pa.table({"order": order, "content_hash": hashes,
                          "minhash": pa.array(list(sig), pa.list_(pa.uint16()))})
        docs = ray.data.from_arrow(table).repartition(3)
        found = dedupe.distributed_duplicates(docs, bands, rows, 0.75, 8, partitions=4)
        got = sorted((r["order"], r["kind"], r["kept"]) for r in found.take_all())
        assert got == expected
