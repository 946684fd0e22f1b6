"""Integer EGGROLL / EGG LM: integer dtypes end to end, exact arithmetic, the pair-sign update."""
import math

import pytest
import torch

from zoopt.eggroll.integer import (EggConfig, EggLM, IntegerEGGROLL, IntNoise, alpha_at, bits_per_byte,
                                   build_divide_table, int_log2_16, param_count, tables, tau_at)

CFG = dict(dim=16, layers=1)


def model(**kw):
    return EggLM(EggConfig(**{**CFG, **kw}), seed=0)


def test_param_count_matches_paper_formula():
    for dim, layers in [(16, 1), (64, 2), (256, 6)]:
        assert param_count(EggConfig(dim=dim, layers=layers)) == 513 * dim + layers * (4 * dim + 12 * dim * dim)
    assert param_count(EggConfig(dim=256, layers=6)) == 4_856_064


def test_integer_dtypes_end_to_end():
    m = model()
    assert all(p.dtype == torch.int8 for p in m.params.values())
    tok = torch.randint(0, 256, (4, 9), generator=torch.Generator().manual_seed(0))
    es = IntegerEGGROLL(m, popsize=8, group_size=2)
    noise = es.noise()
    logits = m.forward(tok[torch.arange(8) // 2], noise)
    assert logits.dtype == torch.int8 and int(logits.abs().max()) <= 127
    A, B = noise.factors("l0.wf", 16, 16)
    assert A.dtype == torch.int32 and B.dtype == torch.int8 and noise.vector("l0.ln1", 16).dtype == torch.int32
    f = es.fitness(tok[:, :-1], tok[:, 1:])
    assert f.dtype == torch.int32
    stats = es.tell(f)
    assert all(p.dtype == torch.int8 and int(p.abs().max()) <= 127 for p in m.params.values())
    assert 0 < stats["moved_fraction"] <= 1
    with pytest.raises(TypeError, match="integer"):
        es.tell(f.float())


def test_exact_float_gemm_equals_int_matmul():
    tok = torch.randint(0, 256, (4, 7), generator=torch.Generator().manual_seed(1))
    a, b = model(), model(matmul="int")
    b.params = {k: v.clone() for k, v in a.params.items()}
    noise = IntNoise(torch.arange(4), seed=3, generation=0, cfg=a.cfg)
    assert torch.equal(a.forward(tok, noise), b.forward(tok, noise))
    assert torch.equal(a.forward(tok), b.forward(tok))


def test_lookup_tables_match_their_definitions():
    div = build_divide_table()
    for u, v in [(1, 300), (3, -7), (127, 16129), (5, -16129), (16, 255)]:
        assert int(div[u, v + 32768]) == max(-127, min(127, math.floor(v / u)))
    s = torch.tensor([16, 17, 1000, 123456, 2 ** 28 - 1, 3], dtype=torch.int64)
    exact = 16 * torch.log2(s.double() / 16)
    assert (int_log2_16(s, tables().mantissa).double() - exact).abs().max() <= 1.0
    logits = torch.randint(-127, 128, (5, 256), generator=torch.Generator().manual_seed(2)).to(torch.int8)
    tgt = torch.randint(0, 256, (5,))
    ll = tables().log_likelihood(logits, tgt).double() / 16
    ref = torch.log_softmax(logits.double() / 16 * math.log(2), -1).gather(1, tgt[:, None]).squeeze(1) / math.log(2)
    assert (ll - ref).abs().max() < 0.15


def test_antithetic_noise_mirrors_and_slices_regenerate():
    cfg = EggConfig(**CFG)
    full = IntNoise(torch.arange(6), seed=5, generation=2, cfg=cfg)
    part = IntNoise(torch.tensor([3, 4]), seed=5, generation=2, cfg=cfg)
    A, B = full.factors("head", 256, 16)
    assert torch.equal(A[0], -A[1]) and torch.equal(B[0], B[1])
    pa, pb = part.factors("head", 256, 16)
    assert torch.equal(pa, A[3:5]) and torch.equal(pb, B[3:5])
    v = full.vector("l0.bf", 16)
    assert v[2].abs().max() > 0 and (v[2] + v[3]).abs().max() <= 1   # mirrored up to the floor of the shift


def test_update_is_sign_of_pair_difference_with_threshold():
    m = model()
    es = IntegerEGGROLL(m, popsize=8, group_size=2, seed=1)
    es.generation = 500                                   # tau > 0: only significant entries move
    before = {k: v.clone() for k, v in m.params.items()}
    f = torch.tensor([5, 1, 2, 2, 0, 9, 3, 3], dtype=torch.int32)
    es.tell(f)
    F = torch.tensor([1, 0, -1, 0])
    tau = tau_at(4.0, 500)
    from scipy.stats import norm
    assert tau == int(16 * norm.ppf(1 - (1 / (15 * 0.5 + 1)) / 2)) == 25
    noise = IntNoise(torch.arange(0, 8, 2), seed=1, generation=500, cfg=m.cfg)
    z = noise.int8_normal("l0.uh", 32).to(torch.int64)
    Z = (z[:, 16:] * F[:, None]).t() @ z[:, :16]
    step = torch.sign(Z) * (Z.abs() * 16 >= tau * math.isqrt(4) * 256)
    assert torch.equal(m.params["l0.uh"].to(torch.int64), (before["l0.uh"].to(torch.int64) + step).clamp(-127, 127))
    assert 0 < int((step != 0).sum()) < step.numel()


def test_alpha_schedule():
    assert alpha_at(4.0, 0) == 1.0
    assert alpha_at(4.0, 1000) == pytest.approx(1 / 16)
    assert alpha_at(0.5, 123) == 0.5
    assert tau_at(4.0, 0) == 0


def test_training_lowers_loss_and_resume_is_exact():
    torch.manual_seed(0)
    text = torch.tensor(list(b"abcabcabcabd" * 40), dtype=torch.int64)
    x = torch.stack([text[i:i + 12] for i in range(0, 96, 12)])
    y = torch.stack([text[i + 1:i + 13] for i in range(0, 96, 12)])
    m = model()
    es = IntegerEGGROLL(m, popsize=32, group_size=4, seed=0)
    start = bits_per_byte(m, x, y)
    for _ in range(4):
        es.tell(es.fitness(x, y))
    state = es.state_dict()
    for _ in range(4):
        es.tell(es.fitness(x, y))
    assert bits_per_byte(m, x, y) < start - 0.5
    m2 = model()
    es2 = IntegerEGGROLL(m2, popsize=32, group_size=4, seed=0)
    es2.load_state_dict(state)
    for _ in range(4):
        es2.tell(es2.fitness(x, y))
    assert all(torch.equal(m.params[k], m2.params[k]) for k in m.params)


def test_bad_arguments_name_the_argument():
    for kw, word in [(dict(dim=24), "dim"), (dict(layers=0), "layers"), (dict(vocab=300), "vocab"),
                     (dict(sigma_shift=-1), "sigma_shift"), (dict(matmul="fast"), "matmul")]:
        with pytest.raises(ValueError, match=word):
            EggConfig(**kw)
    with pytest.raises(ValueError, match="popsize"):
        IntegerEGGROLL(model(), popsize=7)
    with pytest.raises(ValueError, match="group_size"):
        IntegerEGGROLL(model(), popsize=8, group_size=3)
    with pytest.raises(ValueError, match="tokens"):
        model().forward(torch.zeros(5, dtype=torch.int64))
