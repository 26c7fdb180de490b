"""The GPU path's choices and its MFU arithmetic, checked on a CPU (the GPU is faked where needed)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tuner import gpu


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.5),
    ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", 989.5),
    ("NVIDIA H20", 148.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A10G", 125.0),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA L4", 121.0),
    ("Tesla T4", 65.0),
    ("Some Future GPU", None),
])
def test_the_peak_comes_from_the_table_most_specific_name_first(name, tflops):
    assert gpu.peak_flops(name) == (tflops * 1e12 if tflops else None)


def test_every_peak_names_its_source():
    for name, tflops, source in gpu.PEAK_BF16_TFLOPS:
        assert tflops > 0 and len(source) > 20, name


def test_gpt2_small_flops_per_token_match_the_published_count():
    """GPT-2 124M: nanoGPT's 123.65M parameters (the tied embedding once, the position embeddings
    left out: a lookup, no matmul), 6·N per token, plus causal attention's 6·L·T·d_attn."""
    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        model = GPT2LMHeadModel(GPT2Config())  # 124M, tied input and output embeddings
    parameters, layers, width = gpu.model_shape(model)
    assert (parameters, layers, width) == (124_439_808 - 1024 * 768, 12, 12 * 64)
    # at T = 1024: 6 × 123,653,376 + 6 × 12 × 1024 × 768 = 741,920,256 + 56,623,104
    assert gpu.flops_per_token(parameters, layers, width, 1024) == 798_543_360
    # 100k tokens/s on an H100 SXM: 7.99e16 / 9.895e14 FLOP/s
    assert gpu.mfu(100_000, 798_543_360, gpu.peak_flops("H100")) == pytest.approx(0.080701, abs=1e-6)
    assert gpu.mfu(100_000, 798_543_360, None) is None


def test_an_untied_input_embedding_is_not_counted_and_attention_uses_heads_times_head_dim():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         head_dim=32, vocab_size=1000, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert gpu.model_shape(model) == (total - 1000 * 256, 2, 4 * 32)  # lm_head counted, embed_tokens not


def test_a_data_parallel_trials_mfu_divides_by_every_gpu_it_uses():
    one = gpu.mfu(400_000, 798_543_360, gpu.peak_flops("H200"))
    assert gpu.mfu(400_000, 798_543_360, gpu.peak_flops("H200"), gpus=4) == pytest.approx(one / 4)


def test_on_cpu_the_trial_trains_in_fp32_with_plain_adamw_and_no_loader_workers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = gpu.training_options("auto", False, None, cpus=4)
    assert options == {"bf16": False, "fp16": False, "optim": "adamw_torch", "dataloader_num_workers": 0,
                       "dataloader_pin_memory": False}
    assert gpu.training_options("auto", True, 2, cpus=4)["torch_compile"] is True


@pytest.mark.parametrize("bf16, capability, precision, tf32", [
    (True, (9, 0), "bf16", True),  # Hopper
    (False, (7, 5), "fp16", False),  # Turing: fp16 with loss scaling, no TF32
])
def test_on_a_gpu_auto_precision_fused_adamw_tf32_and_pinned_workers(monkeypatch, bf16, capability, precision, tf32):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    options = gpu.training_options("auto", False, None, cpus=4)
    assert options[precision] and not options["bf16" if precision == "fp16" else "fp16"]
    assert options["optim"] == "adamw_torch_fused"
    assert options["dataloader_num_workers"] == 3 and options["dataloader_pin_memory"]
    assert options.get("tf32", False) is tf32
    assert gpu.training_options("fp32", False, None, cpus=1)["dataloader_num_workers"] == 1
    assert not gpu.training_options("fp32", False, 0, cpus=8)["dataloader_persistent_workers"]


def test_every_option_is_a_training_arguments_field_of_this_transformers(monkeypatch):
    import dataclasses

    from transformers import TrainingArguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(gpu.training_options("auto", True, None, cpus=4)) <= fields


def test_the_trainer_counts_tokens_on_the_host_for_every_rank(monkeypatch):
    """No GPU sync per step: a batch's shape gives its tokens, times the ranks training alike."""
    from types import SimpleNamespace

    from transformers import Trainer

    from tuner import trial

    counting = trial.counting_trainer()
    monkeypatch.setattr(Trainer, "training_step", lambda self, model, inputs, *a, **k: "loss")
    trainer = object.__new__(counting)  # no model: only the counting is under test
    trainer.state, trainer.args = SimpleNamespace(num_input_tokens_seen=100), SimpleNamespace(world_size=4)
    assert trainer.training_step(None, {"input_ids": torch.zeros(8, 64, dtype=torch.long)}) == "loss"
    assert trainer.state.num_input_tokens_seen == 100 + 8 * 64 * 4
