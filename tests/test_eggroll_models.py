"""EGGROLL on any torch model: convolutions, norms, attention, bare parameters, user layers and per-time-step
cell loops. Every case compares the population forward with the plain module run on each member's materialized
parameters (member_parameters + functional_call), and checks that nothing trainable is left frozen."""
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from zoopt.eggroll import EGGROLL

N = 6
ATOL = 2e-5


def materialized(opt, model, x):
    with torch.no_grad():
        return torch.stack([functional_call(model, opt.member_parameters(i), (x,)) for i in range(N)])


def check_members(model, x, *, train=False, rank=2, distinct=True):
    """Population forward (shared input, and member-major rows) == each member's plain forward."""
    model.train(train)
    opt = EGGROLL(model, popsize=N, rank=rank, sigma=0.3, seed=1)
    assert all(pp.mode != "frozen" for pp in opt.plan.params), opt.plan.params
    ref = materialized(opt, model, x)
    with torch.no_grad():
        with opt.population(shared=x):
            shared = model(x).reshape(N, *ref.shape[1:])
        torch.testing.assert_close(shared, ref, atol=ATOL, rtol=1e-5)
        if distinct:
            with opt.population():
                rows = model(x.repeat(N, *[1] * (x.dim() - 1))).reshape(N, *ref.shape[1:])
            torch.testing.assert_close(rows, ref, atol=ATOL, rtol=1e-5)
            with opt.population([1, 2, 5]):  # a broken antithetic pair: one factor draw per member
                part = model(x.repeat(3, *[1] * (x.dim() - 1))).reshape(3, *ref.shape[1:])
            torch.testing.assert_close(part, ref[[1, 2, 5]], atol=ATOL, rtol=1e-5)
    assert (ref[0] - ref[2]).abs().max() > 1e-2 and (ref[0] - ref[1]).abs().max() > 1e-2  # members differ
    return opt


@pytest.mark.parametrize("conv,shape", [
    (lambda: nn.Conv1d(4, 6, 3, padding=1), (3, 4, 9)),
    (lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2, padding=1, padding_mode="circular"), (2, 4, 7, 7)),
    (lambda: nn.Conv3d(2, 3, 2, bias=False, dilation=(1, 2, 1)), (2, 2, 4, 5, 4)),
])
def test_convolutions_are_a_shared_conv_plus_a_rank_r_term(conv, shape):
    torch.manual_seed(0)
    model = nn.Sequential(conv(), nn.Tanh())
    opt = check_members(model, torch.randn(*shape))
    assert opt.plan.params[0].mode == "lowrank" and type(model[0]).__name__.startswith("PopConv")
    # the member's kernel differs from the center by a rank-2 matrix (the kernel seen as out x in*k)
    w = model[0].weight
    delta = (opt.member_parameters(3)["0.weight"] - w).reshape(w.shape[0], -1)
    assert torch.linalg.matrix_rank(delta) == 2


@pytest.mark.parametrize("norm,shape,train", [
    (lambda: nn.BatchNorm1d(5), (4, 5), True),
    (lambda: nn.BatchNorm2d(3), (4, 3, 2, 2), True),
    (lambda: nn.BatchNorm2d(3), (4, 3, 2, 2), False),
    (lambda: nn.GroupNorm(2, 4), (3, 4, 5), True),
    (lambda: nn.RMSNorm(5), (3, 2, 5), True),
    (lambda: nn.LayerNorm([2, 5]), (3, 2, 5), True),
])
def test_norms_take_full_rank_noise_on_their_affine(norm, shape, train):
    torch.manual_seed(0)
    layer = norm()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
        if not train and hasattr(layer, "running_var"):
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
    before = [b.clone() for b in layer.buffers()]
    opt = check_members(nn.Sequential(nn.Identity(), layer), torch.randn(*shape), train=train)
    assert {pp.mode for pp in opt.plan.params} == {"full"}
    if not train:
        assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers()))


class SelfAttention(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)

    def forward(self, x):
        rows = x.shape[0] if self.batch_first else x.shape[1]
        pad = torch.zeros(rows, 4, dtype=torch.bool)
        pad[:, -1] = True
        out, weights = self.mha(x, x, x, key_padding_mask=pad if self.batch_first else None)
        return out.transpose(0, 1) if not self.batch_first else out + weights.sum(-1, keepdim=True)


class PositionalCrossAttention(nn.Module):
    """A bare positional parameter, key/value widths unlike the query's, a causal boolean mask."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(4, 8))
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True, kdim=5, vdim=5)

    def forward(self, x):
        memory = x[..., :5]
        causal = torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)
        return self.mha(x + self.pos, memory, memory, attn_mask=causal, need_weights=False)[0]


@pytest.mark.parametrize("make", [lambda: SelfAttention(True), lambda: SelfAttention(False), PositionalCrossAttention])
def test_multihead_attention_through_its_projections(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(4, 2, 8) if isinstance(model, SelfAttention) and not model.batch_first else torch.randn(2, 4, 8)
    opt = check_members(model, x, distinct=not (isinstance(model, SelfAttention) and not model.batch_first))
    modes = {pp.name: pp.mode for pp in opt.plan.params}
    assert modes["mha.out_proj.weight"] == "lowrank" and modes["mha.in_proj_bias"] == "full"
    assert modes.get("mha.in_proj_weight", modes.get("mha.q_proj_weight")) == "lowrank"


class ConvPosLinear(nn.Module):
    """The issue's model: a Conv1d, a positional parameter and a Linear (only the Linear used to train)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(4, 6) * 0.1)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x) + self.pos).flatten(1))


class Dense(nn.Linear):
    """A user subclass of a torch layer with its own forward (like the model zoo's layers)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_bare_parameters_and_user_layers_are_perturbed_and_trained():
    torch.manual_seed(0)
    x, y = torch.randn(5, 2, 6), torch.randint(0, 3, (5,))
    model = ConvPosLinear()
    opt = check_members(model, x)
    modes = {pp.name: pp.mode for pp in opt.plan.params}
    assert modes == {"conv.weight": "lowrank", "conv.bias": "full", "pos": "full", "head.weight": "lowrank",
                     "head.bias": "full"}
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        opt.step((x, y), nn.CrossEntropyLoss())
    assert all(not torch.equal(v, start[k]) for k, v in model.state_dict().items())  # every tensor trained
    dense = nn.Sequential(Dense(6, 5), Dense(5, 2))
    opt = check_members(dense, torch.randn(4, 6))
    assert [pp.mode for pp in opt.plan.params] == ["lowrank", "full", "lowrank", "full"]
    # the swapped model pickles (a Ray actor receives it) and its loop class is found again by name
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), model(x))
    assert type(clone) is type(model)


class CellLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)   # a slice of the shared batch, after the population has expanded
        return self.head(h)


def test_rnn_cell_in_a_per_time_step_loop():
    torch.manual_seed(0)
    x, y = torch.randn(3, 4, 3), torch.randint(0, 2, (3,))
    model = CellLoop()
    check_members(model, x)
    opt = EGGROLL(model, popsize=N, rank=1, sigma=0.1, lr=0.1, seed=0)
    losses = [opt.step((x, y), nn.CrossEntropyLoss()) for _ in range(3)]   # failed before: "not a multiple"
    assert all(torch.isfinite(torch.tensor(losses)))


def test_strict_names_what_stays_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.ConvTranspose1d(4, 2, 1))
    with pytest.raises(ValueError, match=r"cannot perturb \['1.weight', '2.weight', '2.bias'\]"):
        EGGROLL(model, popsize=4)
    with pytest.warns(UserWarning, match="1.weight"):
        opt = EGGROLL(model, popsize=4, strict=False)
    assert [pp.name for pp in opt.plan.perturbed()] == ["0.weight", "0.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded on purpose: no warning, no error
        EGGROLL(model, popsize=4, exclude=["1", "2"])
