"""The non-differentiable model zoo: shapes, stage protocol, hard vs smooth forwards, exact semantics."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoopt.polystep.evaluate import BlockEvaluator, model_stages
from zoopt.polystep.subspace import HybridSubspace
from zoopt.problems.zoo import MODELS, make_model, quantize_int8, smooth_twin, staircase, zoo_data
from zoopt.problems.zoo.layers import LIFHidden, LIFReadout, QuantizedDense

PARAMS_784 = {"snn": 101_770, "int8": 118_282, "argmax": 119_306, "staircase": 118_282,
              "moe": 234_382, "mlp": 101_770}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_and_parameter_counts_match_the_paper(name):
    model = make_model(name)
    assert n_params(model) == PARAMS_784[name]
    x = torch.randn(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    small = make_model(name, in_features=64, num_classes=3, steps=4) if name == "snn" else \
        make_model(name, in_features=64, num_classes=3)
    assert small(torch.randn(7, 64)).shape == (7, 3)


def test_moe_with_20_classes_has_the_papers_parameter_count():
    assert n_params(make_model("moe", num_classes=20)) == 235_672


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stages_compose_to_the_forward_and_own_every_parameter(name):
    """The stage protocol as PolyStep's staged evaluator reads it (zoopt.polystep.evaluate)."""
    model = make_model(name, seed=3, in_features=64)
    x = torch.randn(6, 1, 8, 8)
    stages = model_stages(model)
    assert len({n for n, _ in stages}) == len(stages)
    inputs = [x.flatten(1)]
    for _, module in stages:
        inputs.append(module(inputs[-1]))
    assert torch.equal(inputs[-1], model(x))
    for stage_name, module in stages:
        assert module is getattr(model, stage_name)
    evaluator = BlockEvaluator(model, HybridSubspace.from_module(model, rank=1, max_subspace_dim=64), 8)
    assert evaluator.stages is not None  # every parameter is owned by exactly one stage
    params = dict(model.named_parameters())
    for pname, (k, local) in evaluator.owner.items():
        stage_name, module = stages[k]
        assert pname == f"{stage_name}.{local}" and dict(module.named_parameters())[local] is params[pname]
    assert sorted(evaluator.owner) == sorted(params)
    acts = evaluator._stage_inputs(x)
    assert evaluator.input_mode == "flatten" and all(torch.equal(a, b) for a, b in zip(acts, inputs))


def test_snn_input_current_is_computed_once_per_forward():
    model = make_model("snn")
    calls = []
    model.fc1.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(3, 784))
    assert len(calls) == 1


# which parameters receive no gradient through the hard forward (zero or None)
BLOCKED = {"snn": {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
           "int8": {"quant.weight", "quant.bias"},
           "staircase": {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
           "moe": {"moe.gate.weight", "moe.gate.bias"},
           "argmax": set(), "mlp": set()}


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    if out.requires_grad:
        F.cross_entropy(out, y).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _is_zero(g):
    return g is None or not bool(g.abs().sum() > 0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hard_models_block_gradients_and_smooth_twins_pass_them(name):
    torch.manual_seed(0)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    hard = make_model(name, seed=1)
    twin = smooth_twin(hard)
    assert twin.smooth and not hard.smooth
    assert all(torch.equal(a, b) for a, b in zip(hard.parameters(), twin.parameters()))
    hard_grads, twin_grads = _grads(hard, x, y), _grads(twin, x, y)
    blocked = set(BLOCKED[name])
    if name == "moe":  # an expert no input is routed to gets no gradient either
        used = set(hard.moe.route(hard.fc1(x)).argmax(-1).tolist())
        blocked |= {n for n in hard_grads if n.startswith("moe.experts.") and int(n.split(".")[2]) not in used}
        assert used
    for pname in hard_grads:
        assert _is_zero(hard_grads[pname]) == (pname in blocked), pname
        assert not _is_zero(twin_grads[pname]), pname
    if name == "snn":  # the spike threshold cuts the graph: the output has no gradient at all
        assert not hard(x).requires_grad


def test_argmax_routing_passes_no_gradient_to_an_unselected_key():
    torch.manual_seed(0)
    model = make_model("argmax", seed=2)
    with torch.no_grad():  # hidden activations are >= 0 (ReLU): a negative key never wins
        model.attn.keys[:7] = model.attn.keys[:7].abs()
        model.attn.keys[7] = -0.1
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    assert _is_zero(_grads(model, x, y)["attn.keys"][7])
    assert not _is_zero(_grads(smooth_twin(model), x, y)["attn.keys"][7])


def test_int8_quantizer_rounds_and_clamps_on_the_001_grid():
    w = torch.tensor([0.0049, 0.0151, -0.026, 0.3, 2.0, -3.0])
    expected = torch.tensor([0.0, 0.02, -0.03, 0.30, 1.27, -1.28])
    assert torch.allclose(quantize_int8(w), expected, atol=1e-7)
    layer = QuantizedDense(4, 3)
    assert torch.allclose(layer.weight.std(), torch.tensor(0.1), rtol=0.6) and torch.equal(layer.bias, torch.zeros(3))
    x = torch.randn(5, 4)
    assert torch.allclose(layer(x), F.linear(x, quantize_int8(layer.weight), quantize_int8(layer.bias)))
    codes = quantize_int8(layer.weight) / 0.01
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 128
    layer.smooth = True
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))


def test_staircase_has_five_levels():
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    x = torch.tensor([-30.0, logit(0.19), logit(0.21), 0.0, logit(0.61), logit(0.79), logit(0.81), 30.0])
    assert torch.allclose(staircase(x), torch.tensor([0.0, 0.0, 0.2, 0.4, 0.6, 0.6, 0.8, 1.0]))
    model = make_model("staircase")
    h = model.fc1(torch.randn(64, 784))
    levels = set(torch.round(h * 5).unique().tolist())
    assert levels <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} and len(levels) >= 3
    assert torch.allclose(h * 5, torch.round(h * 5))


def test_moe_routes_each_input_to_exactly_one_expert():
    torch.manual_seed(0)
    model = make_model("moe", seed=4)
    h = torch.relu(torch.randn(16, 128))
    moe = model.moe
    chosen = moe.gate(h).argmax(dim=-1)
    assert len(chosen.unique()) >= 2
    expected = torch.stack([moe.experts[int(e)](h[i:i + 1])[0] for i, e in enumerate(chosen)])
    assert torch.allclose(moe(h), expected, atol=1e-6)
    routes = moe.route(h)
    assert torch.equal(routes.sum(-1), torch.ones(16)) and torch.equal(routes.argmax(-1), chosen)
    unused = [e for e in range(4) if e not in chosen.tolist()]
    if unused:  # changing an expert nobody is routed to changes nothing
        before = moe(h)
        with torch.no_grad():
            moe.experts[unused[0]][0].weight.add_(1.0)
        assert torch.equal(moe(h), before)
    moe.smooth = True
    assert torch.allclose(moe.route(h), torch.softmax(moe.gate(h), -1))


def test_lif_spike_train_and_readout_on_a_hand_built_case():
    hidden = LIFHidden(steps=15)
    # constant current 0.3: mem 0.3, 0.585, 0.85575, 1.1130 -> spike and reset, period 4
    train = hidden(torch.tensor([[0.3, 1.0, 0.04]]))
    assert train.shape == (1, 15, 3)  # [batch, time, neurons]
    assert train[0, :, 0].tolist() == [0, 0, 0, 1] * 3 + [0, 0, 0]
    assert train[0, :, 1].tolist() == [1] * 15        # mem == threshold spikes (>=), reset to 0 every step
    assert train[0, :, 2].sum() == 0                    # 0.04 / (1 - 0.95) = 0.8 < 1: never fires
    readout = LIFReadout(1, 1)
    with torch.no_grad():
        readout.weight.fill_(0.6)
        readout.bias.zero_()
    # input spikes at steps 4, 8, 12: mem 0.6 -> decays to 0.5144 -> 0.95*0.5144 + 0.6 = 1.089 spikes at 8
    counts = readout(train[:, :, :1])
    assert torch.equal(readout(torch.cat([train[:, :, :1]] * 2)), torch.tensor([[1.0], [1.0]]))
    assert counts.tolist() == [[1.0]]


def test_make_model_is_seeded_and_checks_its_arguments():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = make_model("int8", seed=5), make_model("int8", seed=5), make_model("int8", seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.quant.weight, b.quant.weight) and not torch.equal(a.quant.weight, c.quant.weight)
    with pytest.raises(ValueError, match="model must be one of"):
        make_model("resnet")
    with pytest.raises(ValueError, match="in_features"):
        make_model("mlp", in_features=0)
    with pytest.raises(ValueError, match="data must be"):
        zoo_data("fashion")


def test_models_have_no_buffers():
    # the official package lays a model out from state_dict(): buffers would become coordinates
    for name in MODELS:
        model = make_model(name)
        assert list(model.state_dict()) == [n for n, _ in model.named_parameters()]


def test_population_forward_under_vmap_matches_the_loop():
    from torch.func import functional_call

    torch.manual_seed(0)
    x = torch.randn(8, 784)
    for name in ("snn", "argmax", "moe"):
        model = make_model(name)
        base = dict(model.named_parameters())
        stacked = {k: torch.stack([v.detach() + 0.05 * i * torch.randn_like(v) for i in range(3)])
                   for k, v in base.items()}
        batched = torch.vmap(lambda p, model=model: functional_call(model, p, (x,)))(stacked)
        for i in range(3):
            single = functional_call(model, {k: v[i] for k, v in stacked.items()}, (x,))
            assert torch.allclose(batched[i], single, atol=1e-5)
