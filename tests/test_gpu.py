"""The GPU path's choices and its MFU arithmetic, checked on a CPU (the GPU is faked where needed)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tuner import gpu


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0),
    ("Tesla T4", 65.0),
    ("Some Future GPU", None),
])
def test_the_peak_comes_from_the_table_most_specific_name_first(name, tflops):
    assert gpu.peak_flops(name) == (tflops * 1e12 if tflops else None)


def test_gpt2_small_flops_per_token_match_the_hand_count():
    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        model = GPT2LMHeadModel(GPT2Config())  # 124M, tied input and output embeddings
    parameters, layers, width = gpu.model_shape(model)
    assert (parameters, layers, width) == (124_439_808, 12, 768)  # the tied matrix counted once
    # 6 N + 12 L d T at T = 1024: 746,638,848 + 113,246,208
    assert gpu.flops_per_token(parameters, layers, width, 1024) == 859_885_056
    # 100k tokens/s on an H100 SXM: 8.6e16 / 9.89e14 FLOP/s
    assert gpu.mfu(100_000, 859_885_056, gpu.peak_flops("H100")) == pytest.approx(0.08694, abs=1e-5)
    assert gpu.mfu(100_000, 859_885_056, None) is None


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
