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
