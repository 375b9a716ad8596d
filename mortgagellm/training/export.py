"""Models in and out of training: the trainable model a rank starts from, the consolidated export
of a DeepSpeed checkpoint to a Hugging Face safetensors model, and loading an export back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DS_TAG = "ds"
"""The DeepSpeed checkpoint tag the loop writes and the export reads."""


def with_lora(model: Any, lora: dict) -> Any:
    """`model` wrapped with peft LoRA adapters as the recipe's lora section says."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"], task_type="CAUSAL_LM"))


def load_trainable(base_model: str, method: str, lora: dict,
                   gradient_checkpointing: bool) -> Any:
    """The start model, with LoRA adapters when asked, gradient checkpointing when asked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return with_lora(model, lora) if method == "lora" else model


def export_model(checkpoint: Path, base: Path, out: Path, method: str, lora: dict,
                 zero_stage: int, merge: bool = True, adapter_out: Path | None = None) -> Path:
    """Consolidate the DeepSpeed checkpoint into a Hugging Face safetensors model (+ tokenizer).

    ZeRO partitions are gathered into one fp32 state dict; LoRA adapters are merged into the
    base weights, so the next stage always receives a full model — unless `merge` is False,
    which writes the adapter alone (peft's adapter_config.json + adapter_model.safetensors).
    `adapter_out` (LoRA, merged): the adapter is also written there, before the merge, so
    serve.topology `adapters` can serve it on the base beside the other expert's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if zero_stage == 0:
        state = torch.load(checkpoint / DS_TAG / "mp_rank_00_model_states.pt",
                           weights_only=False)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DS_TAG)
    model = AutoModelForCausalLM.from_pretrained(base)
    if method == "lora":
        model = with_lora(model, lora)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lora_" in k or method == "full"]:
        raise ValueError(f"export of {checkpoint}: the checkpoint does not match the model "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if method == "lora" and merge:
        if adapter_out is not None:
            model.save_pretrained(adapter_out)
        model = model.merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def load_model(path: str | Path) -> Any:
    """An exported model for evaluation: a full model, or start model + adapter."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)
