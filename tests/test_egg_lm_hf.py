"""EGGROLL on a Hugging Face causal LM (a tiny random Llama built from a config: no download).

The LM route of scripts/egg_mezo_lm.py: input_ids repeated per member (member-major N*B rows, so HF
builds its attention masks for N*B rows), the population forward equal to each member's plain forward
on materialized parameters, and a Linear-only EGGROLL that lowers a teacher-forced answer loss."""
import pytest
import torch
from torch.func import functional_call

transformers = pytest.importorskip("transformers")

from zoopt.eggroll import EGGROLL  # noqa: E402

N = 4
LINEAR_ONLY = ["model.embed_tokens", "*norm*", "lm_head"]


def tiny_llama(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_population_forward_equals_materialized_members(tie):
    """Every trainable tensor perturbed (embeddings, the tied or untied head, the projections, and the
    RMSNorm weights through the member loop), with a padding mask: the population's logits equal each
    member's plain forward."""
    model = tiny_llama(tie)
    opt = EGGROLL(model, popsize=N, rank=2, sigma=0.1, seed=3)
    assert all(pp.mode != "frozen" for pp in opt.plan.params)
    ids = torch.randint(0, 48, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded row: the mask HF builds must follow each member's rows
    with torch.no_grad():
        with opt.population():
            out = model(input_ids=ids.repeat(N, 1), attention_mask=mask.repeat(N, 1)).logits.view(N, 3, 7, -1)
        ref = torch.stack([functional_call(model, opt.member_parameters(i), (ids,), {"attention_mask": mask}).logits
                           for i in range(N)])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    assert (ref[0] - ref[1]).abs().max() > 1e-2 and (ref[0] - ref[2]).abs().max() > 1e-2  # members differ


def answer_loss(logits, targets):
    """Mean cross-entropy of the answer tokens per row: logits [R, T, V], targets [R, T] (-100 elsewhere)."""
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets[:, 1:], reduction="none")
    keep = (targets[:, 1:] != -100).float()
    return (loss * keep).sum(1) / keep.sum(1)


def test_linear_only_eggroll_lowers_an_answer_loss():
    """Only the nn.Linear projections perturbed (embeddings, norms and head excluded on purpose), custom
    fitness through population()/tell(): the answer loss on a fixed batch falls."""
    model = tiny_llama(tie=True, seed=1)
    opt = EGGROLL(model, popsize=16, rank=1, sigma=0.05, lr=0.02, seed=0, optimizer="adam", exclude=LINEAR_ONLY)
    assert {pp.name.rsplit(".", 2)[-2] for pp in opt.plan.perturbed()} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 48, (6, 6), generator=g)
    targets = torch.full_like(ids, -100)
    targets[:, 4:] = ids[:, 4:]  # the last two tokens are the "answer"
    head = model.lm_head.weight.clone()

    def center_loss():
        with torch.no_grad():
            return float(answer_loss(model(input_ids=ids).logits, targets).mean())

    start = center_loss()
    for _ in range(25):
        with torch.no_grad(), opt.population():
            logits = model(input_ids=ids.repeat(opt.popsize, 1)).logits
        opt.tell(answer_loss(logits, targets.repeat(opt.popsize, 1)).view(opt.popsize, -1).mean(1))
    end = center_loss()
    assert end < start - 0.1, (start, end)
    assert torch.equal(model.lm_head.weight, head)  # excluded tensors stay as they were


def _script():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "egg_mezo_lm.py")
    spec = importlib.util.spec_from_file_location("egg_mezo_lm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_scores_answers_from_the_kept_logits_only():
    """egg_mezo_lm.py runs the LM head on the answer window only (logits_to_keep): the per-row answer loss
    and exact match equal those of the full logits, for answers of different lengths, in a population too."""
    script = _script()
    model = tiny_llama(tie=True, seed=2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 48, (4, 7), generator=g)
    targets = torch.full_like(ids, -100)
    targets[0, 4:6], targets[1, 5:7], targets[2, 3:5], targets[3, 6] = ids[0, 4:6], ids[1, 5:7], ids[2, 3:5], ids[3, 6]
    assert script.answer_window(targets) == 7 - 3 + 1
    with torch.no_grad():
        full = script.answer_scores(model(input_ids=ids).logits, targets)
        kept = script.score(model, ids, targets)
        torch.testing.assert_close(kept[0], full[0], atol=1e-6, rtol=1e-6)
        assert torch.equal(kept[1], full[1])
        opt = EGGROLL(model, popsize=N, rank=1, sigma=0.1, seed=0, exclude=LINEAR_ONLY)
        with opt.population():
            pop = script.score(model, ids, targets, repeat=N)
        ref = torch.cat([script.answer_scores(functional_call(model, opt.member_parameters(i), (ids,)).logits,
                                              targets)[0] for i in range(N)])
    torch.testing.assert_close(pop[0], ref, atol=1e-5, rtol=1e-5)
