"""SlotModel's batched answer loss against one unbatched forward per example."""
import pytest
import torch

pytest.importorskip("peft")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from zoopt.merge.lm import ByteTokenizer, SlotModel, encode_examples  # noqa: E402


def test_batched_losses_match_one_forward_per_example():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    sm = SlotModel(LlamaForCausalLM(cfg).eval(), config, slots=2, rows_per_forward=3)
    g = torch.Generator().manual_seed(1)
    for slot in range(2):  # distinct random adapters in the two slots
        for layer in sm.layers.values():
            if hasattr(layer, "lora_A") and f"slot{slot}" in layer.lora_A:
                for w in (layer.lora_A[f"slot{slot}"].weight, layer.lora_B[f"slot{slot}"].weight):
                    w.data.copy_(torch.randn(w.shape, generator=g) * 0.3)
    # prompts and answers of different lengths, so padding and the kept logits are exercised
    records = [{"prompt": "a", "answer": "xyz"}, {"prompt": "long prompt here", "answer": "1"},
               {"prompt": "mid len", "answer": "answer"}, {"prompt": "zz", "answer": "q"}]
    examples = encode_examples(ByteTokenizer(), records)
    got = sm.losses([(0, examples), (1, examples[1:])])

    def direct(slot, exs):
        total = 0.0
        with torch.no_grad():
            for ex in exs:
                logits = sm.model(input_ids=ex.ids[None], adapter_names=[f"slot{slot}"]).logits[0]
                logp = torch.log_softmax(logits[:-1].float(), -1)
                target = ex.ids[ex.n_prompt:]
                total += float(-logp[ex.n_prompt - 1:len(ex.ids) - 1].gather(1, target[:, None]).mean())
        return total / len(exs)

    want = [direct(0, examples), direct(1, examples[1:])]
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(want[0] - direct(1, examples)) > 1e-3  # the slots really differ


def _build_pool_script():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                        "build_merge_pool.py")
    spec = importlib.util.spec_from_file_location("build_merge_pool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_base_pool_goes_through_the_smollm2_code_path(tmp_path):
    """--tiny-base: a byte-level Llama saved as a transformers folder that load_base reads
    (byte tokenizer), adapters trained on it by the same train_adapter, a pool load_pool
    accepts, and the own-skill check (each adapter alone vs the base) on it."""
    import os

    from transformers import LlamaForCausalLM

    from zoopt.merge.lm import load_base
    from zoopt.merge.pool import load_pool

    script = _build_pool_script()
    out = str(tmp_path)
    base_dir = script.train_tiny_base(out, layers=1, hidden=32, heads=2, steps=3, batch=4, lr=1e-3, seed=0)
    model, tok = load_base(base_dir)
    assert isinstance(model, LlamaForCausalLM) and isinstance(tok, ByteTokenizer)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    x, y, mask = script.batch_of(tok, [{"prompt": "ab", "answer": " c"}])
    assert x.tolist() == [[97, 98, 32, 99, 256]] and y.tolist() == [[-100, -100, 32, 99, 256]]
    _, y_full, _ = script.batch_of(tok, [{"prompt": "ab", "answer": " c"}], prompt_loss=True)
    assert y_full.tolist() == x.tolist()
    for task in ("add", "upper"):
        script.train_adapter(base_dir, task, os.path.join(out, "adapters", task), steps=2, batch=2, lr=1e-3, seed=0)
    pool = load_pool(os.path.join(out, "adapters"))
    assert pool.names == ["add", "upper"] and len(pool.modules) == 7  # all attention + MLP projections
    report = script.own_skill_check(out, n=3, max_new_tokens=2)
    assert set(report) == {"add", "upper"}
    for row in report.values():
        assert row["base_loss"] > 0 and row["adapter_loss"] > 0 and row["base_loss"] != row["adapter_loss"]
        assert 0.0 <= row["base_exact"] <= 1.0
