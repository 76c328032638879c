"""Fine-tuning methods: LoRA (DoRA, rsLoRA), QLoRA, full, layer freezing and prompt tuning.

Prefix tuning is deliberately absent: with transformers 5.x, peft's PrefixTuning trains but is
ignored by `generate()`, so a saved prefix would not change what the model says.
"""

from __future__ import annotations

from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import MethodSpec
from sftjob_trainer.trainer_error import TrainerError


def check_device(method: MethodSpec, cuda: bool) -> None:
    """Fail early for a method the device cannot run.

    Raises:
        TrainerError: UnsupportedDevice for QLoRA without CUDA (bitsandbytes 4-bit kernels need a CUDA GPU).
    """
    if method.type == "qlora" and not cuda:
        raise TrainerError(
            ErrorCode.UNSUPPORTED_DEVICE,
            "method.type qlora quantises the base to 4 bits with bitsandbytes, which needs a CUDA GPU; these workers "
            "have none. Set compute.gpusPerWorker >= 1 on a GPU node, or use method.type lora (same adapter, "
            "unquantised base)",
            "spec.method.type",
        )


def quantization_config(method: MethodSpec, compute_dtype: Any) -> Any:
    """The transformers `BitsAndBytesConfig` of a QLoRA job, or None for other methods."""
    if method.type != "qlora" or method.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quantization.quant_type,
        bnb_4bit_use_double_quant=method.quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def transformer_blocks(model: Any) -> Any:
    """The model's list of transformer blocks (the ModuleList as long as `num_hidden_layers`).

    Raises:
        TrainerError: InvalidSpec when no such list is found (an unusual architecture).
    """
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    message = "method.type freeze: cannot find the transformer blocks of this architecture"
    raise TrainerError(ErrorCode.INVALID_SPEC, message, "spec.method.type")


def _freeze(model: Any, method: MethodSpec) -> Any:
    assert method.freeze is not None  # the API rejects type freeze without it
    blocks = transformer_blocks(model)
    if method.freeze.trainable_layers > len(blocks):
        raise TrainerError(
            ErrorCode.INVALID_SPEC,
            f"method.freeze.trainableLayers is {method.freeze.trainable_layers} but the model has {len(blocks)} blocks",
            "spec.method.freeze.trainableLayers",
        )
    for param in model.parameters():
        param.requires_grad = False
    for block in list(blocks)[-method.freeze.trainable_layers :]:
        for param in block.parameters():
            param.requires_grad = True
    if method.freeze.train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                for param in module.parameters():
                    param.requires_grad = True
    return model


def peft_config(method: MethodSpec, model_dir: str) -> Any:
    """The peft config of an adapter method (None for full and freeze)."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if method.type in ("lora", "qlora"):
        lora = method.lora
        targets: Any = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=targets, use_dora=lora.use_dora, use_rslora=lora.use_rslora, bias="none",
        )
    if method.type == "prompt_tuning":
        prompt = method.prompt_tuning
        if prompt.init_text:
            return PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=prompt.init_text,
                tokenizer_name_or_path=model_dir,
            )
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
    return None


def apply_method(model: Any, method: MethodSpec, model_dir: str, gradient_checkpointing: bool = False) -> Any:
    """Make the parameters the method trains trainable and wrap adapters.

    Args:
        model: The loaded base model.
        method: `spec.method`.
        model_dir: The base model's directory (prompt-tuning text init reads its tokenizer).
        gradient_checkpointing: Whether activations will be recomputed (QLoRA prepares inputs for it).

    Returns:
        The model to train: a `PeftModel` for lora/qlora/prompt_tuning, the base otherwise.

    Raises:
        TrainerError: InvalidSpec when a target module or the layer count does not fit the model.
    """
    if method.type == "full":
        for param in model.parameters():
            param.requires_grad = True
        return model
    if method.type == "freeze":
        return _freeze(model, method)
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    try:
        return get_peft_model(model, peft_config(method, model_dir))
    except ValueError as err:
        field = "spec.method.lora.targetModules"
        raise TrainerError(ErrorCode.INVALID_SPEC, f"method.lora.targetModules: {err}", field) from None
