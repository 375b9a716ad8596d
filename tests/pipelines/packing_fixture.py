"""Test helper: packed shards + a corpus manifest for the pretrain tests, made without the corpus
stage (so pretrain is tested on its own contract: PACKED_SCHEMA shards listed in a manifest)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mortgagellm import manifest
from mortgagellm.datasets import mortgage
from mortgagellm.datasets.schemas import PACKED_SCHEMA
from mortgagellm.datasets.splits import purpose_seed


def pack(docs: list[list[int]], seq_len: int, pad_id: int) -> list[tuple[list[int], list[int]]]:
    """Greedy packing: documents fill rows in order, a long one continues in the next row."""
    rows, ids, segs, segment = [], [], [], 0
    for doc in docs:
        segment += 1
        while doc:
            room = seq_len - len(ids)
            ids += doc[:room]
            segs += [segment] * len(doc[:room])
            doc = doc[room:]
            if len(ids) == seq_len:
                rows.append((ids, segs))
                ids, segs, segment = [], [], 1 if doc else 0
    if ids:
        rows.append((ids + [pad_id] * (seq_len - len(ids)), segs + [0] * (seq_len - len(segs))))
    return rows


def write_corpus(run_dir: Path, base_model: str, n_docs: int, seq_len: int, n_shards: int = 2):
    """Tokenise n_docs synthetic mortgage docs with base's tokenizer, pack, write shards and a
    corpus manifest under run_dir/corpus; returns the rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model)
    texts = [r["text"] for r in
             mortgage.generate(purpose_seed(0, "corpus"), 0, n_docs, noise=False)]
    docs = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for t in texts]
    rows = pack(docs, seq_len, tok.pad_token_id)
    shard_dir = run_dir / "corpus" / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n_shards):
        part = rows[k::n_shards]
        table = pa.table({"input_ids": [r[0] for r in part], "segment_ids": [r[1] for r in part]},
                         schema=PACKED_SCHEMA)
        pq.write_table(table, shard_dir / f"part-{k:05d}.parquet", row_group_size=16)
    manifest.write(str(run_dir / "corpus"), manifest.Manifest(
        stage="corpus", fingerprint="test", config={},
        outputs={"shards": manifest.artifact(shard_dir)}))
    return rows
