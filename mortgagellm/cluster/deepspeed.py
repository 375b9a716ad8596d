"""DeepSpeed configuration built from the recipe: ZeRO 0-3, offload, precision, batch sizes."""

from __future__ import annotations

from typing import Any

from mortgagellm.config import DeepSpeedSettings, ScalingSettings


def resolve_precision(ds: DeepSpeedSettings, use_gpu: bool) -> str:
    """'auto' means bf16 on GPU and fp32 on CPU (CPU kernels gain little from bf16 here)."""
    if ds.precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return ds.precision


def ds_config(ds: DeepSpeedSettings, scaling: ScalingSettings) -> dict[str, Any]:
    """The dict handed to `deepspeed.initialize(config=...)` for this recipe.

    train_batch_size = micro batch x accumulation x world size, as DeepSpeed checks. Without
    optimizer offload the optimizer is torch's AdamW (`torch_adam`), which needs no compiled op
    on CPU; with offload DeepSpeed uses its CPU Adam, as ZeRO-Offload requires.
    """
    precision = resolve_precision(ds, scaling.use_gpu)
    offload_device = {"device": "cpu", "pin_memory": scaling.use_gpu}
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero |= {"overlap_comm": scaling.use_gpu, "contiguous_gradients": True,
                 "reduce_bucket_size": 5e8}
    if ds.zero_stage == 3:
        # Export needs whole 16-bit weights on rank 0 rather than per-rank partitions.
        zero |= {"stage3_gather_16bit_weights_on_model_save": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = offload_device
    if ds.offload_params:
        zero["offload_param"] = offload_device
    adam = {"lr": ds.lr, "betas": list(ds.betas), "eps": 1e-8, "weight_decay": ds.weight_decay}
    if not ds.offload_optimizer:
        adam["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": ds.micro_batch_size,
        "gradient_accumulation_steps": ds.grad_accum_steps,
        "train_batch_size": ds.micro_batch_size * ds.grad_accum_steps * scaling.num_workers,
        "gradient_clipping": ds.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "optimizer": {"type": "AdamW", "params": adam},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
