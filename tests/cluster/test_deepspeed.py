"""ds_config: the dict matches the recipe, and DeepSpeed's own config parser accepts it."""

import pytest

from mortgagellm.cluster.deepspeed import ds_config
from mortgagellm.config import DeepSpeedSettings, ScalingSettings

CPU = ScalingSettings()
A100 = ScalingSettings(num_nodes=4, workers_per_node=8, use_gpu=True)


def test_train_batch_size_is_micro_times_accumulation_times_world():
    cfg = ds_config(DeepSpeedSettings(micro_batch_size=2, grad_accum_steps=8), A100)
    assert cfg["train_batch_size"] == 2 * 8 * 32
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 8


def test_auto_precision_is_bf16_on_gpu_and_fp32_on_cpu():
    gpu = ds_config(DeepSpeedSettings(), A100)
    cpu = ds_config(DeepSpeedSettings(), CPU)
    assert gpu["bf16"]["enabled"] and not gpu["fp16"]["enabled"]
    assert not cpu["bf16"]["enabled"] and not cpu["fp16"]["enabled"]
    assert ds_config(DeepSpeedSettings(precision="fp16"), A100)["fp16"]["enabled"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_offload(stage):
    ds = DeepSpeedSettings(zero_stage=stage, offload_optimizer=stage >= 2,
                           offload_params=stage == 3)
    zero = ds_config(ds, CPU)["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == (stage >= 2)
    assert ("offload_param" in zero) == (stage == 3)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)


def test_torch_adam_without_offload_and_cpu_adam_with_it():
    plain = ds_config(DeepSpeedSettings(lr=3e-4, weight_decay=0.1), CPU)["optimizer"]
    assert plain == {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                                                 "weight_decay": 0.1, "torch_adam": True}}
    offloaded = ds_config(DeepSpeedSettings(zero_stage=2, offload_optimizer=True), CPU)
    assert "torch_adam" not in offloaded["optimizer"]["params"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_parses_our_config(stage, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = DeepSpeedSettings(zero_stage=stage, micro_batch_size=4, grad_accum_steps=2,
                           offload_optimizer=stage >= 2)
    parsed = DeepSpeedConfig(ds_config(ds, CPU))
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_batch_size == 8
    assert parsed.gradient_clipping == 1.0
    assert parsed.optimizer_name == "adamw"
