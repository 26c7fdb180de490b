"""The GPU path of a trial: which precision and kernels it trains with, and how well it uses the GPU.

Every choice here degrades to the plain CPU path, so the same trial code runs on a laptop, in CI and
on an H100. Model FLOPs utilization (MFU) counts the FLOPs the model needs, not what the kernels
did, per training token: 6·N for the forward and backward matmuls, N the parameters that take part
in a matmul (every parameter once, less the embedding tables that are only looked up: position
embeddings, and the input embedding where it is not tied to the output head), plus 6·L·T·d_attn for
causal attention's scores and values (PaLM's appendix B counts 12·L·T·d_attn for full attention; the
causal mask halves it), L layers, T tokens per sequence, d_attn = heads × head_dim. Over the GPUs'
dense bf16 peak, all of them for a data-parallel trial.
"""

from __future__ import annotations

from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s: half the "with sparsity" figure of each
# vendor data sheet. Matched in order against `torch.cuda.get_device_name()`: specific names first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 756.0, "NVIDIA H100 data sheet (2023): PCIe, 1,513 with sparsity"),
    ("H100 NVL", 835.5, "NVIDIA H100 NVL product brief (2024): 1,671 with sparsity, per GPU"),
    ("H100", 989.5, "NVIDIA H100 data sheet (2023): SXM5, 1,979 with sparsity"),
    ("H200 NVL", 835.5, "NVIDIA H200 data sheet (2024): H200 NVL, 1,671 with sparsity"),
    ("GH200", 989.5, "NVIDIA GH200 data sheet (2024): 1,979 with sparsity"),
    ("H200", 989.5, "NVIDIA H200 data sheet (2024): H200 SXM, 1,979 with sparsity"),
    ("H20", 148.0, "NVIDIA H20 specification (2024): 296 with sparsity"),
    ("B200", 2250.0, "NVIDIA HGX B200 data sheet (2024): 36 PFLOPS FP16/BF16 with sparsity per 8 GPUs"),
    ("A100", 312.0, "NVIDIA A100 data sheet (2021): SXM and PCIe, 624 with sparsity"),
    ("A800", 312.0, "NVIDIA A800 data sheet (2022): as A100"),
    ("L40S", 362.05, "NVIDIA L40S data sheet (2023): 733 with sparsity"),
    ("L40", 181.05, "NVIDIA L40 data sheet (2022): 362.1 with sparsity"),
    ("L4", 121.0, "NVIDIA L4 data sheet (2023): 242 with sparsity"),
    ("A10G", 125.0, "as the A10 (NVIDIA publishes no A10G data sheet; AWS G5 cites the A10's tensor figures)"),
    ("A10", 125.0, "NVIDIA A10 data sheet (2021): 250 with sparsity"),
    ("RTX 4090", 165.2, "NVIDIA Ada GPU architecture whitepaper: 330.3 with sparsity (fp32 accumulate)"),
    ("RTX 3090", 71.0, "NVIDIA Ampere GA102 whitepaper: 142 with sparsity (fp16 accumulate: 71 fp32)"),
    ("V100", 125.0, "NVIDIA V100 data sheet: SXM2 fp16 tensor (no bf16 on Volta)"),
    ("T4", 65.0, "NVIDIA T4 data sheet: fp16 tensor (no bf16 on Turing)"),
)


def peak_flops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, or None for a GPU not in the table (no MFU then)."""
    for name, tflops, _source in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops * 1e12
    return None


def flops_per_token(parameters: int, layers: int, attention_width: int, sequence: int) -> float:
    """Training FLOPs per token: 6·N for the matmuls, forward and backward, plus causal attention's
    6·L·T·d_attn (see the module's docstring)."""
    return 6.0 * parameters + 6.0 * layers * sequence * attention_width


def model_shape(model) -> tuple[int, int, int]:
    """What the FLOPs count needs of a Hugging Face causal LM: the parameters that take part in a
    matmul (shared ones once, looked-up embedding tables left out), its layers and its attention
    width (heads × head_dim, which need not be the hidden size)."""
    import torch

    config = model.config
    layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)
    unique = {id(p): p for p in model.parameters()}
    head = model.get_output_embeddings()
    head_weight = id(head.weight) if head is not None else None
    looked_up = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} - {head_weight}
    parameters = sum(p.numel() for key, p in unique.items() if key not in looked_up)
    return int(parameters), int(layers), attention_width(config)


def attention_width(config) -> int:
    """Heads × head_dim: the width of the queries and keys whose products attention computes."""
    width = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    head_dim = getattr(config, "head_dim", None)
    if heads and head_dim:
        return int(heads * head_dim)
    return int(width)


def mfu(tokens_per_s: float, per_token_flops: float, peak: float | None, gpus: int = 1) -> float | None:
    """Model FLOPs utilization, 0–1, of `gpus` GPUs of this peak training `tokens_per_s` in all (a
    data-parallel trial counts every rank's tokens); None without a known peak."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * per_token_flops / (peak * max(gpus, 1))


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
