"""pretrain's plain functions, against hand-worked values and a published MFU figure."""


import pytest
import torch

from mortgagellm.pipelines.pretrain import packed_inputs
from mortgagellm.pipelines import bootstrap
from mortgagellm.training.loop import flops_per_token, lr_factor, mfu, schedule


def test_packed_inputs_restart_positions_and_mask_boundaries():
    ids = torch.tensor([[11, 12, 13, 21, 22, 0, 0]])
    seg = torch.tensor([[1, 1, 1, 2, 2, 0, 0]])
    out = packed_inputs(ids, seg)
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    # first token of each document and all padding carry no loss
    assert out["labels"].tolist() == [[-100, 12, 13, -100, 22, -100, -100]]
    assert out["input_ids"] is ids and out["use_cache"] is False


def test_packed_loss_equals_per_document_losses(tiny_pair):
    """Attention stays within documents: the packed row's token losses equal those of each
    document run on its own."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_pair.output_path("base")).eval()
    doc_a, doc_b = [5, 17, 40, 41, 90], [7, 8, 300, 12]
    ids = torch.tensor([doc_a + doc_b + [0, 0]])
    seg = torch.tensor([[1] * 5 + [2] * 4 + [0, 0]])
    inputs = packed_inputs(ids, seg)
    with torch.no_grad():
        packed = model(**inputs).logits[0]
        alone_a = model(input_ids=torch.tensor([doc_a])).logits[0]
        alone_b = model(input_ids=torch.tensor([doc_b])).logits[0]
    torch.testing.assert_close(packed[:5], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[5:9], alone_b, atol=1e-5, rtol=1e-4)


def test_lr_warmup_then_cosine_to_floor():
    assert lr_factor(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos = 0
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, 0.1) == pytest.approx(0.1)


def test_schedule_sets_the_optimizer_lr_from_lr_factor_at_every_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = schedule(optimizer, 3, 12, 0.2)
    seen = []
    for _ in range(14):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    assert seen == pytest.approx([0.5 * lr_factor(s, 3, 12, 0.2) for s in range(14)])
    assert seen[2] == pytest.approx(0.5) and seen[12] == pytest.approx(0.1)  # peak, then floor


def test_bootstrap_trains_with_the_shared_schedule(monkeypatch):
    """bootstrap's loop has no schedule of its own: the LR it steps with is `schedule`'s."""
    lrs = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.optimizer = None

        def forward(self, x, attention_mask):
            return type("Out", (), {"loss": (self.w * x).pow(2).mean()})()

    real_step = torch.optim.AdamW.step

    def recording_step(optimizer, *args, **kwargs):
        lrs.append(optimizer.param_groups[0]["lr"])
        return real_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    batches = iter([{"x": torch.ones(2), "attention_mask": torch.ones(2)}] * 40)
    bootstrap.train_loop(Probe(), batches, 40, 1e-2, "probe")
    assert lrs == pytest.approx([1e-2 * lr_factor(s, 2, 40, 0.0) for s in range(40)])


def test_mfu_reproduces_torchtitan_llama3_8b_on_a100():
    """torchtitan docs/performance.md: Llama 3 8B, FSDP2 on 64 A100-80GB, local batch 1,
    seq 8192, selective op AC: 2,973 tokens/s per GPU = 58.2 % MFU (A100 bf16 peak 312 TFLOP/s).
    Llama-3-8B: 8,030,261,248 parameters, 32 layers, 32 heads of dim 128."""
    per_token = flops_per_token(8_030_261_248, 32, 32, 128, 8192)
    assert per_token == pytest.approx(6 * 8_030_261_248 + 12 * 32 * 32 * 128 * 8192)
    assert mfu(2973, per_token, 312) == pytest.approx(0.582, abs=0.001)
    assert mfu(2904, per_token, 312) == pytest.approx(0.568, abs=0.001)  # selective layer AC


def test_the_eta_reads_as_a_clock():
    from mortgagellm.training.loop import clock

    assert [clock(s) for s in (0, 59.6, 61, 3599, 3600, 3725)] == [
        "0:00", "1:00", "1:01", "59:59", "1:00:00", "1:02:05"]
