"""Adapter I/O through PEFT: pools saved by PEFT's save_pretrained (safetensors or
the older .bin) load into the pool; a merged adapter carries PEFT's full config and
PeftModel.from_pretrained reproduces the service's forward with it."""
import json
import os

import pytest
import torch

pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from test_merge import TARGETS, make_pool, tiny_llama  # noqa: E402
from zoopt.merge.lm import SlotModel  # noqa: E402
from zoopt.merge.operator import merge_factors  # noqa: E402
from zoopt.merge.pool import load_pool, save_adapter  # noqa: E402
from zoopt.merge.whitebox import dare, task_vectors, ties  # noqa: E402


def peft_trained_adapter(folder, seed, safe=True):
    """What build_merge_pool.py leaves: a PEFT model's save_pretrained output."""
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(folder, safe_serialization=safe)
    return model


def test_pools_saved_by_peft_load_in_both_formats(tmp_path):
    models = [peft_trained_adapter(str(tmp_path / f"a{i}"), i, safe=i != 1) for i in range(3)]
    assert os.path.exists(tmp_path / "a1" / "adapter_model.bin")  # the legacy format is in the pool
    pool = load_pool(str(tmp_path))
    assert pool.names == ["a0", "a1", "a2"] and pool.config.task_type == "CAUSAL_LM"
    layer = dict(models[1].named_modules())["base_model.model.model.layers.1.self_attn.v_proj"]
    m = "base_model.model.model.layers.1.self_attn.v_proj"
    assert torch.equal(pool.A[m][1], layer.lora_A["default"].weight.detach())
    assert torch.equal(pool.B[m][1], layer.lora_B["default"].weight.detach())


def test_a_merged_adapter_loads_in_peft_and_gives_the_service_forward(tmp_path):
    pool = make_pool(str(tmp_path / "pool"), n=3)
    alpha, beta = [1.0, 0.4, 0.7], [0.6, -0.9, 0.3]
    factors = merge_factors(pool, alpha, beta)
    out = str(tmp_path / "merged")
    save_adapter(out, pool.config, factors, base_model="my/base-model")
    config = json.load(open(os.path.join(out, "adapter_config.json")))
    assert config["base_model_name_or_path"] == "my/base-model" and config["task_type"] == "CAUSAL_LM"
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == sorted(TARGETS)

    ids = torch.tensor([[5, 80, 33, 120, 7, 64, 200, 3]])
    loaded = PeftModel.from_pretrained(tiny_llama(), out).eval()
    slots = SlotModel(tiny_llama(), pool.config, slots=1)
    slots.write(0, factors)
    with torch.no_grad():
        want = slots.model(input_ids=ids, adapter_names=["slot0"]).logits
        got = loaded(input_ids=ids).logits
        plain = tiny_llama()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really acts


def test_dare_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    pool = make_pool(str(tmp_path), n=3)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = dare(pool, 0.5, seed=7), dare(pool, 0.5, seed=7), dare(pool, 0.5, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    m = pool.modules[0]
    assert torch.equal(a[m], b[m]) and not torch.equal(a[m], c[m])
    kept = (a[m] != 0).float().mean()
    assert 0.6 < kept < 0.98  # 3 updates with half their entries each: ~7/8 of positions survive
    tv = task_vectors(pool, m)
    # TIES at density 1: the sign-agreeing mean of the full updates
    sign = torch.sign(tv.sum(0))
    agree = torch.sign(tv) == sign
    assert torch.allclose(ties(pool, 1.0)[m], (tv * agree).sum(0) / agree.sum(0).clamp(min=1), atol=1e-6)
