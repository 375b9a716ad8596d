"""corpus stage: the passes' pure parts on hand-made inputs, then one end-to-end run on a real
local Ray cluster (counts add up, shards load, quarantine complete, the PII canary never reaches a
shard, a forced re-run writes identical shards, a plain re-run skips)."""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mortgagellm import routing
from mortgagellm.cluster import data
from mortgagellm.config import CorpusConfig, load_recipe
from mortgagellm.datasets import batches, mortgage, readers
from mortgagellm.datasets.schemas import PACKED_ROW_GROUP_ROWS, PACKED_SCHEMA, QUARANTINE_SCHEMA
from mortgagellm.pipelines import corpus
from mortgagellm.pipelines.recipe import run_stage
from mortgagellm.tier1 import load as load_tier1
from mortgagellm.training import inputs

REGULATION = (Path(__file__).resolve().parents[2] / "data" / "cfpb-regulations" /
              "reg-h-1008-2011-31730.xml")
CANARY = {"name": "Zebulon Quartermaine", "ssn": "078-05-1120", "phone": "(415) 555-2671",
          "email": "zeb.quartermaine@canary-mail.org", "address": "1600 Canary Row",
          "loan": "9981234567"}
CANARY_TEXT = (
    f"From: {CANARY['name']} <{CANARY['email']}>\n"
    f"My name is {CANARY['name']}, SSN {CANARY['ssn']}, loan {CANARY['loan']}.\n"
    "Kiwi orchard escrow question: why did the escrow cushion for the kiwi orchard go up this "
    f"year? Call me at {CANARY['phone']} or write to {CANARY['address']}, Monterey, CA 93940.\n"
    f"Thanks,\n{CANARY['name']}")


@pytest.fixture(scope="module")
def tokenizer():
    from mortgagellm.modeling import train_tokenizer

    texts = [r["text"] for r in mortgage.generate(1, 0, 200, noise=False)]
    return train_tokenizer(texts, 400)


def test_clean_runs_the_transforms_in_order_on_one_batch():
    batch = {name: [] for name in readers.RAW_SCHEMA.names}
    for i, (text, reject) in enumerate([(f"<p>{CANARY_TEXT}</p>", ""), ("", ""),
                                        ("Short one", ""), ("", "invalid_json")]):
        row = readers._row({"unit": 0, "source": "user"}, i, f"f.jsonl:{i}", f"d{i}", "user",
                           text, reject=reject)
        for name in batch:
            batch[name].append(row[name])
    cfg = CorpusConfig(min_words=5).model_dump(mode="json", exclude={"tasks"})
    out = batches.to_columns(batches.to_arrow(
        corpus.clean(batches.to_columns(batches.to_arrow(batch, readers.RAW_SCHEMA)), cfg, "salt"),
        corpus.STAGING_SCHEMA))
    assert out["reject"] == ["", "empty_text", "", "invalid_json"]
    assert out["quality"] == ["", "", "too_short", ""]
    text = out["text"][0]
    assert text.startswith("From: ") and "Kiwi orchard escrow question" in text
    assert "<p>" not in text and not any(v in text for v in CANARY.values())
    assert out["html_stripped"].tolist() == [True, False, False, False]
    assert out["pii_name"][0] == 6 and out["pii_ssn"][0] == 1
    assert out["minhash"][0].shape == (150,)


def test_pack_shard_drops_tokenizes_mixes_and_packs(tokenizer):
    batch = {"order": np.array([1, 2, 3]), "source": ["synthetic", "regulations", "user"],
             "text": ["Escrow shortage notice.", "Section 1024.17 escrow.", "Dropped doc."]}
    ids = {"bos_id": 0, "eos_id": 1, "pad_id": 2}
    packed, per_source = corpus.pack_shard(batch, np.array([3]), {"regulations": 2.0}, 0, 16,
                                           tokenizer.backend_tokenizer, ids)
    one, reg = (len(tokenizer(t)["input_ids"]) + 2 for t in batch["text"][:2])
    assert per_source == {"regulations": reg, "user": 0, "synthetic": one}
    tokens = np.concatenate(packed["input_ids"])[np.concatenate(packed["segment_ids"]) > 0]
    assert len(tokens) == one + 2 * reg  # regulations used twice, order 3 dropped
    assert tokenizer.decode(tokens.tolist(), skip_special_tokens=True).count("1024.17") == 2


def test_workers_tokenizer_matches_the_base_models_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    spec = corpus.tokenizer_spec(str(tmp_path))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert (spec["bos_id"], spec["eos_id"], spec["pad_id"]) == \
        (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
    text = "Renée’s escrow: $1,204.55 <p>due</p>"
    assert corpus.load_tokenizer(spec["file"]).encode(text, add_special_tokens=False).ids == \
        hf(text, add_special_tokens=False)["input_ids"]


def test_too_many_rejects_fail_naming_the_worst_sources(tmp_path):
    metrics = {"documents": {"read": 100, "rejected": 11},
               "rejects_by_source": {"s3://b/bad.jsonl": 9, "s3://b/ok.jsonl": 2},
               "rejects_by_reason": {"invalid_json": 11}}
    corpus.check_rejects(metrics, 0.2, tmp_path / "q.parquet")  # 11 % <= 20 %: passes
    with pytest.raises(ValueError, match=r"11\.0%.*s3://b/bad\.jsonl \(9\); s3://b/ok\.jsonl"):
        corpus.check_rejects(metrics, 0.1, tmp_path / "q.parquet")


def test_tier1_threshold_fitted_on_a_hand_written_threshold_set(tmp_path):
    """serve.router.threshold_set: a file of `text` + `route` lines (the hand-written set's
    layout) is what the threshold is fitted on. Its one request, marked structured, reads as
    small talk to tier 1 (conversational at ~0.89): with caught 1 that mistake must fall below
    the threshold; the manifest metrics say so."""
    import random

    from mortgagellm.config import Recipe
    from mortgagellm.datasets.tasks import _documents
    from mortgagellm.datasets.tasks.routing import routing_requests

    train = routing_requests(_documents(5, 0, 1500), 200, 0.2, random.Random(0))
    held = routing_requests(_documents(6, 0, 1500), 40, 0.2, random.Random(1))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    pq.write_table(pa.Table.from_pylist([{"request": r["request"], "route": r["route"]}
                                         for r in held]), tmp_path / "eval_routing.parquet")
    trap = "Sort this out for me please"
    (tmp_path / "hand.jsonl").write_text(json.dumps(
        {"id": "cal-1", "text": trap, "route": "structured", "note": "mislabelled"}) + "\n")
    recipe = Recipe.model_validate({"serve": {"router": {
        "train_set": str(tmp_path / "train.jsonl"), "threshold_set": str(tmp_path / "hand.jsonl"),
        "caught": 1.0}}})
    metrics = corpus.write_tier1(recipe, tmp_path, tmp_path / "tier1.json")
    model = load_tier1((tmp_path / "tier1.json").read_text())
    p = model.probability(trap)
    assert p < 0.5 and model.threshold > 1 - p
    assert (metrics["kind"], metrics["threshold"], metrics["heldout_requests"]) == (
        "ngram", model.threshold, 40)


def write_user_corpus(root: Path) -> dict[str, str]:
    """A user corpus with the canary, good records and one bad record of every kind; returns
    {location suffix: expected quarantine reason}."""
    root.mkdir()
    good = [json.dumps({"id": f"u{i}", "text": f"Customer note {i}: please explain how the "
                        f"escrow analysis number {i} changed my monthly payment this year."})
            for i in range(5)]
    lines = [json.dumps({"id": "canary", "text": CANARY_TEXT}), *good,
             '{"text": "broken', json.dumps({"text": ["not", "a", "string"]}),
             json.dumps({"body": "no text"}), json.dumps({"text": "   "}),
             json.dumps({"text": "z " * 30_000})]
    (root / "letters.jsonl").write_bytes("\n".join(lines).encode() + b"\n{\"text\": \"\xff\"}\n")
    pq.write_table(pa.table({"text": ["A Parquet note about the payoff quote for a home loan "
                                      "that closes next month.", None]}), root / "t.parquet")
    (root / "notes").mkdir()
    (root / "notes" / "good.txt").write_text("Plain text: rate lock extensions cost points "
                                             "and the lender explains the fee in writing.")
    (root / "notes" / "bad.txt").write_bytes(b"\xfe\xff binary")
    (root / "sheet.csv").write_text("a,b\n")
    return {"letters.jsonl:7": "invalid_json", "letters.jsonl:8": "wrong_type",
            "letters.jsonl:9": "missing_field", "letters.jsonl:10": "empty_text",
            "letters.jsonl:11": "oversized", "letters.jsonl:12": "bad_utf8",
            "t.parquet#row=1": "missing_field", "bad.txt": "bad_utf8",
            "sheet.csv": "unsupported_format"}


@pytest.mark.integration
def test_corpus_stage_end_to_end(ray_cluster, tiny_recipe_path, tmp_path, caplog, monkeypatch):
    # The tiny pair, built through its own stage: tiny_pair runs the whole recipe, which now
    # includes this stage and later ones.
    boot = run_stage(load_recipe(tiny_recipe_path), "bootstrap")
    expected_rejects = write_user_corpus(tmp_path / "user")
    # run.output_dir relative to the working directory, as configs/cpu-demo.yaml gives it: the
    # shards were once written, then deleted by copying them onto themselves (make demo failed)
    monkeypatch.chdir(tiny_recipe_path.parent)
    recipe = load_recipe(tiny_recipe_path, {"run.output_dir": "run",
        "corpus.synthetic_docs": 2000, "corpus.synthetic_shards": 4,
        "corpus.regulations": [str(REGULATION)], "corpus.user_corpora": [str(tmp_path / "user")],
        "corpus.mixture": {"regulations": 2.0}, "corpus.max_doc_chars": 20_000,
        "corpus.seq_len": 128, "corpus.docs_per_shard": 800, "corpus.batch_docs": 400})
    m = corpus.run(recipe, force=True)
    docs, metrics = m.metrics["documents"], m.metrics

    # Every record read is accounted for exactly once.
    assert docs["read"] == docs["rejected"] + docs["exact_duplicates"] + \
        docs["near_duplicates"] + docs["low_quality"] + docs["kept"]
    assert docs["read"] == sum(s["read"] for s in metrics["by_source"].values())
    assert metrics["by_source"]["synthetic"]["read"] == 2000
    assert docs["rejected"] == sum(metrics["rejects_by_reason"].values())
    # Regulations weigh 2: their tokens are packed twice, everything else once.
    assert metrics["packed"]["tokens"] == metrics["tokens_kept_documents"] + \
        metrics["by_source"]["regulations"]["tokens"]

    # The file with six bad lines is named first when the rejects pass the limit.
    with pytest.raises(ValueError, match=r"Worst sources: \S*letters\.jsonl \(6\)"):
        corpus.check_rejects(metrics, 0.001, Path("q.parquet"))

    quarantine = pq.read_table(m.output_path("quarantine.parquet"))
    assert quarantine.schema.remove_metadata() == QUARANTINE_SCHEMA.remove_metadata()
    reasons = dict(zip(quarantine["location"].to_pylist(), quarantine["reason"].to_pylist(),
                       strict=True))
    for suffix, reason in expected_rejects.items():
        assert [r for loc, r in reasons.items() if loc.endswith(suffix)] == [reason], suffix
    assert len(quarantine) == docs["rejected"] + docs["low_quality"]
    dups = pq.read_table(m.output_path("duplicates.parquet"))
    assert len(dups) == docs["exact_duplicates"] + docs["near_duplicates"]

    shard_dir = Path(m.output_path("shards"))
    files = sorted(p.name for p in shard_dir.glob("*.parquet"))
    assert files == [s["file"] for s in metrics["shards"]] and len(files) >= 2
    stream = []
    for name in files:
        table = pq.read_table(shard_dir / name)
        assert table.schema.remove_metadata() == PACKED_SCHEMA.remove_metadata()
        ids = np.stack(table["input_ids"].to_numpy(zero_copy_only=False))
        segments = np.stack(table["segment_ids"].to_numpy(zero_copy_only=False))
        assert ids.shape[1] == 128
        stream.append(ids[segments > 0])
    tokens = np.concatenate(stream)
    assert len(tokens) == metrics["packed"]["tokens"]
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(boot.output_path("base")).decode(
        tokens.tolist(), skip_special_tokens=True)
    assert "Kiwi orchard escrow question" in text  # the canary document is in the shards ...
    assert [v for v in CANARY.values() if v in text] == []  # ... with none of its PII
    assert not any(v in s for v in CANARY.values() for s in quarantine["snippet"].to_pylist())

    # The task and eval sets come out of the same stage, one Parquet per set, counted.
    tasks = Path(m.output_path("tasks"))
    assert {p.stem: pq.ParquetFile(p).metadata.num_rows for p in tasks.glob("*.parquet")} == \
        metrics["tasks"]
    assert metrics["tasks"]["eval_qa"] > 0 and metrics["tasks"]["sft_train"] > 0
    assert inputs.task_dir(recipe, "corpus", tmp_path / "sft") == tasks

    # Tier 1 of the serving router is this stage's artifact, measured on eval_routing.
    tier1 = load_tier1(Path(m.output_path("tier1")).read_text())
    assert routing.tier1_path(recipe) == Path(m.output_path("tier1"))
    held = pq.read_table(tasks / "eval_routing.parquet").to_pylist()
    right = sum((tier1.probability(r["request"]) >= 0.5) == (r["route"] == "structured")
                for r in held)
    assert {k: metrics["tier1"][k] for k in ("kind", "train_requests", "heldout_requests",
                                             "heldout_accuracy", "threshold")} == {
        "kind": "ngram", "train_requests": metrics["tasks"]["routing_train"],
        "heldout_requests": len(held), "heldout_accuracy": round(right / len(held), 4),
        "threshold": tier1.threshold}
    assert metrics["tier1"]["heldout_accuracy"] > 0.9

    # Row groups are small, so training's seeded shuffle mixes sources; every row is fed once.
    shards = [str(shard_dir / name) for name in files]
    assert max(n for _, _, n in data.row_groups(shards)) == PACKED_ROW_GROUP_ROWS
    fed = [sum(1 for _ in data.rank_rows(shards, rank, 2, shuffle_seed=0)) for rank in (0, 1)]
    assert sum(fed) == metrics["packed"]["rows"]

    rebuilt = corpus.run(recipe, force=True)  # same inputs and config: byte-identical shards
    assert rebuilt.outputs == m.outputs and rebuilt.metrics["content_sha256"] == \
        m.metrics["content_sha256"]
    with caplog.at_level(logging.INFO, logger="mortgagellm"):
        again = corpus.run(recipe)
    assert again.started_at == rebuilt.started_at and "up to date" in caplog.text


def test_dedupe_mode_auto_decides_on_the_driver_below_the_threshold():
    cfg = CorpusConfig(dedupe_distributed_from=1000)
    assert [corpus.dedupe_mode(cfg, n) for n in (999, 1000)] == ["driver", "distributed"]
    assert corpus.dedupe_mode(cfg.model_copy(update={"dedupe_mode": "driver"}), 10**9) == "driver"


@pytest.mark.integration
def test_distributed_dedupe_pass_writes_what_the_driver_pass_writes(ray_cluster, tmp_path):
    # Pass 1 once; pass 2 decided on the driver and by Ray Data groupbys: the same duplicates
    # (with the kept copy named), quarantine, drop lists and counts.
    cfg = CorpusConfig(synthetic_docs=1500, synthetic_shards=3, batch_docs=250,
                       regulations=[str(REGULATION)], dedupe_docs_per_partition=1000)
    units = readers.plan_units(cfg.synthetic_docs, cfg.synthetic_shards, 5, cfg.regulations,
                               cfg.user_corpora, cfg.synthetic_noise)
    staging = tmp_path / "staging"
    documents = corpus.clean_pass(cfg, 0, units, staging).sum("rows")
    written = {}
    for mode in ("driver", "distributed"):
        out = tmp_path / mode
        out.mkdir()
        drops, metrics = corpus.dedupe_pass(cfg.model_copy(update={"dedupe_mode": mode}),
                                            staging, units, documents, out)
        written[mode] = {"metrics": metrics, **{
            name: pq.read_table(out / f"{name}.parquet").to_pylist()
            for name in ("duplicates", "quarantine")}, "drop": {
            p.name: pq.read_table(p)["order"].to_pylist()
            for p in Path(drops).glob("*.drop.parquet")}}
    assert written["driver"] == written["distributed"]
    docs = written["driver"]["metrics"]["documents"]
    assert docs["exact_duplicates"] > 0 and docs["near_duplicates"] > 0
    assert len(written["driver"]["drop"]) == len(units)
    kinds = {d["kind"] for d in written["driver"]["duplicates"]}
    assert kinds == {"exact", "near"}
