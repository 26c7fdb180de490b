"""The GPU path of a trial: which precision and kernels it trains with, and how well it uses the GPU.

Every choice here degrades to the plain CPU path, so the same trial code runs on a laptop, in CI and
on an H100. Model FLOPs utilization (MFU) counts the FLOPs the model needs, not what the kernels
did: 6 × parameters per token for the forward and backward matmuls, plus attention's
12 × layers × width × sequence length (PaLM, appendix B; nanoGPT's `estimate_mfu`), over the
GPU's dense bf16 peak.
"""

from __future__ import annotations

from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. Matched in
# order against `torch.cuda.get_device_name()`, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16: no bf16 on Volta
    ("T4", 65.0),  # fp16: no bf16 on Turing
)


def peak_flops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, or None for a GPU not in the table (no MFU then)."""
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops * 1e12
    return None


def flops_per_token(parameters: int, layers: int, width: int, sequence: int) -> float:
    """Training FLOPs per token: forward and backward matmuls plus attention scores and values."""
    return 6.0 * parameters + 12.0 * layers * width * sequence


def model_shape(model) -> tuple[int, int, int]:
    """Parameters (shared ones once), layers and width of a Hugging Face causal LM."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return int(parameters), int(layers), int(width)


def mfu(tokens_per_s: float, per_token_flops: float, peak: float | None) -> float | None:
    """Model FLOPs utilization, 0–1; None without a known peak."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * per_token_flops / peak


def device_peak() -> float | None:
    """The peak of the GPU this process trains on; None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_flops(torch.cuda.get_device_name(torch.cuda.current_device()))


def precision(requested: str) -> str:
    """`auto` → bf16 where the GPU supports it, else fp16 (with loss scaling) on a GPU, else fp32."""
    import torch

    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def training_options(requested_precision: str, compile_model: bool, loader_workers: int | None,
                     cpus: float) -> dict[str, Any]:
    """`TrainingArguments` fields for the fastest path this machine has.

    On a GPU: the chosen mixed precision, fused AdamW, TF32 matmuls on Ampere and later, data loaders
    with workers (the CPUs the trial holds, less the one that drives the GPU) and pinned memory. On CPU:
    fp32, the plain AdamW and no loader workers, which would only take cores from the training step.
    """
    import torch

    chosen = precision(requested_precision)
    options: dict[str, Any] = {"bf16": chosen == "bf16", "fp16": chosen == "fp16",
                               **({"torch_compile": True} if compile_model else {})}
    if not torch.cuda.is_available():
        return {**options, "optim": "adamw_torch", "dataloader_num_workers": loader_workers or 0,
                "dataloader_pin_memory": False}
    workers = loader_workers if loader_workers is not None else max(1, min(4, int(cpus) - 1))
    return {**options, "optim": "adamw_torch_fused", "dataloader_num_workers": workers,
            "dataloader_pin_memory": True, "dataloader_persistent_workers": workers > 0,
            **({"tf32": True} if torch.cuda.get_device_capability()[0] >= 8 else {})}
