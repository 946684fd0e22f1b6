"""EGGROLL (float): population-aware layers, the one-GEMM update, antithetic pairs, slices, resume, arguments."""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import zoopt
from zoopt.eggroll import EGGROLL, EGGROLLES, LowRankSpec
from zoopt.kernels import lowrank_factors
from zoopt.eggroll.update import shape_fitness


class TinyRNN(nn.Module):
    """Embedding -> Linear -> LayerNorm -> 2-layer GRU -> GRUCell -> head: every swapped layer type."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.gru = nn.GRU(8, 7, num_layers=2, batch_first=True)
        self.cell = nn.GRUCell(7, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens):
        h = self.norm(torch.tanh(self.proj(self.emb(tokens))))
        out, _ = self.gru(h)
        return self.head(self.cell(out[:, -1]))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 3))


def dense_member_outputs(opt, model, x, members):
    """Reference: build each member's weights and run the plain forward (population inactive)."""
    outs = []
    for i in members:
        params = opt.member_parameters(int(i))
        outs.append(functional_call(model, params, (x,)))
    return torch.stack(outs)


@pytest.mark.parametrize("rank", [1, 3])
def test_population_layers_equal_dense_member_forward(rank):
    torch.manual_seed(1)
    model = TinyRNN()
    opt = EGGROLL(model, popsize=6, rank=rank, sigma=0.3, seed=5)
    tokens = torch.randint(0, 11, (2, 4))
    members = torch.arange(6)
    ref = dense_member_outputs(opt, model, tokens, members)
    with torch.no_grad():
        with opt.population(members, shared=tokens):               # shared rows
            shared = model(tokens).view(6, 2, 3)
        with opt.population(members):                               # member-major rows [N*B, T]
            distinct = model(tokens.repeat(6, 1)).view(6, 2, 3)
    assert torch.allclose(shared, ref, atol=1e-5)
    assert torch.allclose(distinct, ref, atol=1e-5)
    # members differ from each other and from the center
    center = model(tokens)
    assert (shared - center).abs().amax() > 1e-3 and (shared[0] - shared[2]).abs().amax() > 1e-3


def test_inputs_n_t_in_and_flat_layouts_agree():
    model = mlp()
    opt = EGGROLL(model, popsize=4, rank=2, sigma=0.2)
    x = torch.randn(4, 5, 4)                                        # [N, T, in]: 5 rows per member
    with torch.no_grad(), opt.population():
        a = model(x)
        b = model(x.reshape(20, 4)).view(4, 5, 3)                   # [N*T, in]
    ref = torch.stack([functional_call(model, opt.member_parameters(i), (x[i],)) for i in range(4)])
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, ref, atol=1e-5)


def test_antithetic_members_mirror():
    model = mlp()
    opt = EGGROLL(model, popsize=8, rank=2, sigma=0.1)
    center = dict(model.named_parameters())
    for k in range(4):
        plus, minus = opt.member_parameters(2 * k), opt.member_parameters(2 * k + 1)
        for name, p in center.items():
            assert torch.allclose(plus[name] - p, -(minus[name] - p), atol=1e-7)
            assert (plus[name] - p).abs().max() > 0


def test_update_equals_naive_materialized_computation():
    model = mlp()
    N, sigma, rank = 10, 0.2, 2
    opt = EGGROLL(model, popsize=N, rank=rank, sigma=sigma, lr=0.1, seed=3, fitness_shaping="zscore")
    f = torch.randn(N, generator=torch.Generator().manual_seed(0))
    grads = opt.gradients(f)
    shaped = shape_fitness(f, "zscore")
    params = dict(model.named_parameters())
    members = [opt.member_parameters(i) for i in range(N)]
    for name, p in params.items():
        # (W_i - W) / sigma = s_i A_i B_i^T / sqrt(r) materialized per member
        naive = sum(shaped[i] * (members[i][name] - p.detach()) / sigma for i in range(N)) * sigma / math.sqrt(N)
        assert torch.allclose(grads[name], naive, atol=1e-5), name
    before = {n: p.detach().clone() for n, p in params.items()}
    opt.tell(f)
    for name, p in params.items():  # SGD: theta <- theta - lr * G
        assert torch.allclose(p.detach(), before[name] - 0.1 * grads[name], atol=1e-6)


def test_zscore_eps_inside_root_and_groupwise():
    f = torch.tensor([1.0, 3.0, 10.0, 14.0])
    z = shape_fitness(f, "zscore", eps=1e-5)
    assert torch.allclose(z, (f - f.mean()) / torch.sqrt(f.var(unbiased=False) + 1e-5))
    g = shape_fitness(f, "zscore", group_size=2, eps=1e-5)
    expect = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / torch.sqrt(f.var(unbiased=False) + 1e-5)
    assert torch.allclose(g, expect)
    assert shape_fitness(torch.ones(4), "zscore").abs().max() == 0  # constant fitness: no NaN


def test_member_slices_regenerate_identical_noise_and_fitness():
    model = mlp()
    opt = EGGROLL(model, popsize=12, rank=2, sigma=0.2, seed=9)
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    loss = nn.CrossEntropyLoss()
    full = opt.evaluate((x, y), loss)
    part = opt.evaluate((x, y), loss, members=torch.arange(4, 10))   # whole pairs, another "worker"
    odd = opt.evaluate((x, y), loss, members=torch.tensor([3, 4, 7]))  # broken pairs
    assert torch.equal(part, full[4:10])
    assert torch.allclose(odd, full[[3, 4, 7]], atol=1e-6)
    tid = opt.plan.params[0].tensor_id
    a_all, b_all = lowrank_factors(9, tid, 0, torch.arange(6), 9, 4, 2)
    a_sl, b_sl = lowrank_factors(9, tid, 0, torch.tensor([2, 3]), 9, 4, 2)
    assert torch.equal(a_all[2:4], a_sl) and torch.equal(b_all[2:4], b_sl)
    chunked = EGGROLL(mlp(), popsize=12, rank=2, sigma=0.2, seed=9, chunk=4)  # other forwards: rounding only
    assert torch.allclose(chunked.evaluate((x, y), loss), full, atol=1e-6)


def test_noise_changes_with_generation_and_reuse():
    model = mlp()
    opt = EGGROLL(model, popsize=4, sigma=0.2, noise_reuse=2)
    w = model[0].weight
    e0 = opt.member_parameters(0)["0.weight"] - w
    opt.generation = 1
    assert torch.equal(opt.member_parameters(0)["0.weight"] - w, e0)    # reused for 2 generations
    opt.generation = 2
    assert not torch.allclose(opt.member_parameters(0)["0.weight"] - w, e0)


def test_step_trains_and_returns_center_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = mlp()
    loss = nn.CrossEntropyLoss()
    with torch.no_grad():
        start = float(loss(model(x), y))
    opt = EGGROLL(model, popsize=32, rank=1, sigma=0.1, lr=0.3, optimizer="adam", seed=0)
    first = opt.step((x, y), loss)
    assert first == pytest.approx(start, rel=1e-6)
    for _ in range(30):
        last = opt.step((x, y), loss)
    assert last < 0.7 * start


def test_state_dict_resume_is_bit_exact():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss = nn.CrossEntropyLoss()
    kw = dict(popsize=8, rank=2, sigma=0.1, lr=0.05, seed=4, optimizer="adamw", sigma_decay=0.9,
              lr_schedule=lambda t: 1.0 / (1 + t))
    model = mlp()
    opt = EGGROLL(model, **kw)
    for _ in range(3):
        opt.step((x, y), loss)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = opt.state_dict()
    for _ in range(3):
        opt.step((x, y), loss)
    model2 = mlp()
    model2.load_state_dict(saved_model)
    opt2 = EGGROLL(model2, **kw)
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        opt2.step((x, y), loss)
    for (n, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), n


def test_exclude_vectors_and_detach():
    model = TinyRNN()
    opt = EGGROLL(model, popsize=4, exclude=["head"], vectors="frozen", embeddings=False)
    modes = {pp.name: pp.mode for pp in opt.plan.params}
    assert modes["head.weight"] == modes["head.bias"] == "frozen"
    assert modes["emb.weight"] == "frozen" and modes["proj.bias"] == "frozen"
    assert modes["proj.weight"] == modes["gru.weight_hh_l1"] == modes["cell.weight_ih"] == "lowrank"
    member = opt.member_parameters(1)
    assert torch.equal(member["head.weight"], model.head.weight)
    assert type(model.proj).__name__ == "PopLinear" and isinstance(model.proj, nn.Linear)
    opt.detach()
    assert type(model.proj) is nn.Linear and type(model.gru) is nn.GRU


def test_bad_arguments_name_the_argument():
    model = mlp()
    for kwargs, word in [(dict(popsize=7), "popsize"), (dict(rank=0), "rank"), (dict(sigma=-1.0), "sigma"),
                         (dict(lr=0.0), "lr"), (dict(optimizer="lbfgs"), "optimizer"),
                         (dict(fitness_shaping="softmax"), "fitness_shaping"), (dict(group_size=3), "group_size"),
                         (dict(noise_reuse=-1), "noise_reuse"), (dict(vectors="half"), "vectors"),
                         (dict(sigma_decay=1.5), "sigma_decay")]:
        with pytest.raises((ValueError, TypeError), match=word):
            EGGROLL(model, **{"popsize": 8, **kwargs})
    assert type(model[0]) is nn.Linear  # a refused configuration leaves the model's layers alone
    with pytest.raises(TypeError, match="model"):
        EGGROLL("not a model")
    with pytest.raises(ValueError, match=r"cannot perturb \['0.weight', '0.bias'\]"):
        EGGROLL(nn.Sequential(nn.ConvTranspose1d(1, 1, 3)), popsize=4)
    with pytest.warns(UserWarning, match="0.weight"), pytest.raises(ValueError, match="no parameter"):
        EGGROLL(nn.Sequential(nn.ConvTranspose1d(1, 1, 3)), popsize=4, strict=False)
    opt = EGGROLL(model, popsize=4)
    with pytest.raises(ValueError, match="fitness"):
        opt.tell(torch.zeros(5))
    with pytest.raises(ValueError, match="members"):
        opt.population([0, 9])
    with pytest.raises(ValueError, match="multiple"):
        with torch.no_grad(), opt.population():
            model(torch.randn(6, 4))
    with pytest.raises(TypeError, match="data"):
        EGGROLL(mlp(), popsize=4, data=torch.zeros(3))
    with pytest.raises(ValueError, match="data="):
        opt.step((0, 1, 8), nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="batch"):
        opt.step(torch.zeros(3, 4), nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="loss_fn"):
        opt.evaluate((torch.zeros(3, 4), torch.zeros(3)), "mse")
    with pytest.raises(ValueError, match="evaluator"):
        EGGROLL(mlp(), popsize=4, evaluator="gpu-cluster")
    with pytest.raises(ValueError, match="shapes"):
        EGGROLLES(torch.zeros(5), shapes=[(2, 2)])
    with pytest.raises(ValueError, match="popsize"):
        EGGROLLES(torch.zeros(5), popsize=5)


def test_vector_strategy_lowrank_spec_and_minimize():
    x0 = torch.ones(10)
    es = EGGROLLES(x0, popsize=6, rank=2, sigma=0.1, shapes=[(2, 4), (2,)], seed=1)
    spec = es.ask()
    assert isinstance(spec, LowRankSpec)
    pts = spec.points()
    delta = pts - x0
    assert torch.allclose(delta[0], -delta[1], atol=1e-7)
    block = delta[:, :8].reshape(6, 2, 4)
    assert all(torch.linalg.matrix_rank(b) <= 2 for b in block)
    assert torch.allclose(spec.points(torch.tensor([3, 4])), pts[3:5])
    sphere = lambda X: (X ** 2).sum(1)
    r = zoopt.minimize(sphere, x0, method="eggroll", budget=3000, seed=0, popsize=20, sigma=0.1, lr=0.3,
                       shapes=[(2, 4), (2,)])
    assert r.fun < 0.05 * 10 and r.nfev == 3000
    r_flat = zoopt.minimize(sphere, x0, method="eggroll", budget=3000, seed=0, popsize=20, sigma=0.1, lr=0.3)
    assert r_flat.fun < 0.5


def test_vector_strategy_checkpoint_roundtrip():
    es = EGGROLLES(torch.ones(6), popsize=4, optimizer="adam", shapes=[(2, 3)], seed=2)
    for _ in range(3):
        spec = es.ask()
        es.tell((spec.points() ** 2).sum(1))
    state = es.state_dict()
    es2 = EGGROLLES(torch.zeros(6), popsize=4, optimizer="adam", shapes=[(2, 3)], seed=2)
    es2.load_state_dict(state)
    for e in (es, es2):
        spec = e.ask()
        e.tell((spec.points() ** 2).sum(1))
    assert torch.equal(es.mean, es2.mean)


def test_cuda_dispatch_branch_equals_the_cpu_layers(monkeypatch):
    """On CUDA tensors ``population_linear`` hands each member's rank-r term to ``kernels.lowrank_correction``
    (the fused kernel). Run that branch here, on the kernel's CPU reference, against the CPU layers."""
    import zoopt.eggroll.layers as layers

    torch.manual_seed(2)
    model = TinyRNN()
    opt = EGGROLL(model, popsize=6, rank=2, sigma=0.3, seed=5)
    tokens = torch.randint(0, 11, (2, 4))
    with torch.no_grad():
        with opt.population(shared=tokens):
            ref_shared = model(tokens)
        with opt.population([0, 1, 3]):
            ref_rows = model(tokens.repeat(3, 1))
    calls = []
    real = layers.lowrank_correction
    monkeypatch.setattr(layers, "fuses", lambda device, dtype, r: True)
    monkeypatch.setattr(layers, "lowrank_correction", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    with torch.no_grad():
        with opt.population(shared=tokens):
            got_shared = model(tokens)
        with opt.population([0, 1, 3]):
            got_rows = model(tokens.repeat(3, 1))
    assert torch.allclose(got_shared, ref_shared, atol=1e-5) and torch.allclose(got_rows, ref_rows, atol=1e-5)
    assert set(calls) >= {opt.plan.params[i].tensor_id for i, pp in enumerate(opt.plan.params)
                          if pp.name in ("proj.weight", "gru.weight_hh_l1", "head.weight")}


def test_module_parameters_are_the_center_updated_in_place_block_by_block(monkeypatch):
    """The module optimizer holds no flat copy: its optimizer steps the model's own tensors, one block at a
    time (the whole-vector gradient is never built), the spec's center reads them, best_x is not built."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    model = mlp()
    opt = EGGROLL(model, popsize=8, rank=2, sigma=0.1, lr=0.05, seed=4, optimizer="adam", exclude=["2.bias"])
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    stepped = {p.data_ptr() for g in opt.optimizer.param_groups for p in g["params"]}
    assert stepped == {p.data_ptr() for n, p in model.named_parameters() if n != "2.bias"}
    monkeypatch.setattr(opt.strategy, "gradient", lambda *a: pytest.fail("the dense gradient was built"))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        opt.step((x, y), nn.CrossEntropyLoss())
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters() if n != "2.bias")
    assert torch.equal(model[2].bias, start["2.bias"])
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(opt.spec().center, flat) and torch.equal(opt.strategy.center, flat)
    assert opt.strategy.best_x is None and math.isfinite(opt.strategy.best_f)


def test_keep_best_builds_the_best_member():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    model = mlp()
    opt = EGGROLL(model, popsize=6, rank=1, sigma=0.1, seed=2, keep_best=True)
    losses = opt.evaluate((x, y), nn.CrossEntropyLoss())
    best = int(torch.argmin(losses))
    expected = opt.spec().points([best])[0]
    opt.tell(losses)
    assert torch.equal(opt.strategy.best_x, expected) and opt.strategy.best_f == float(losses[best])


def test_float64_module_moves_through_a_float32_master():
    """Tensors of another dtype keep a float32 master (the update's precision), written back after each step."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4).double(), torch.randint(0, 3, (16,))
    model = mlp().double()
    opt = EGGROLL(model, popsize=8, rank=2, sigma=0.1, lr=0.1, seed=1)
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        opt.step((x, y), nn.CrossEntropyLoss())
    for p, part, p0 in zip(model.parameters(), opt.spec().parts, start):
        assert part.dtype == torch.float32 and torch.equal(p.detach(), part.double())
        assert not torch.equal(p.detach(), p0)


def test_one_parameter_optimizer_checkpoints_resume_per_block():
    """Checkpoints of the earlier layout (the flat vector as the optimizer's single parameter, frozen blocks
    inside it) resume bit for bit into the per-block optimizer."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    kw = dict(popsize=8, rank=2, sigma=0.1, lr=0.05, seed=4, optimizer="adam", exclude=["2.weight"])
    model = mlp()
    opt = EGGROLL(model, **kw)
    for _ in range(2):
        opt.step((x, y), nn.CrossEntropyLoss())
    state = opt.state_dict()
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    # the same state in the one-parameter layout: per-block tensors concatenated, zeros for the frozen block
    per_block = state["optimizer"]["state"]
    blocks = opt.strategy.blocks
    trained = [b for b in blocks if b.mode != "frozen"]
    flat_state = {}
    for key in per_block[0]:
        if per_block[0][key].dim() == 0:
            flat_state[key] = per_block[0][key].clone()
        else:
            by_name = {b.name: per_block[j][key].reshape(-1) for j, b in enumerate(trained)}
            flat_state[key] = torch.cat([by_name.get(b.name, torch.zeros(b.numel)) for b in blocks])
    old = dict(state, optimizer={"state": {0: flat_state},
                                 "param_groups": [dict(state["optimizer"]["param_groups"][0], params=[0])]})
    for _ in range(2):
        opt.step((x, y), nn.CrossEntropyLoss())
    model2 = mlp()
    model2.load_state_dict(saved_model)
    opt2 = EGGROLL(model2, **kw)
    opt2.load_state_dict(old)
    for _ in range(2):
        opt2.step((x, y), nn.CrossEntropyLoss())
    for (n, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), n
