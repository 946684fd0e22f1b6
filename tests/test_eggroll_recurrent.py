"""EGGROLL recurrent layers: every member's population forward equals the plain module run with that
member's materialized weights (W + s sigma A B^T / sqrt r), in every input layout; the update on an LSTM
equals the naive materialized computation."""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from zoopt.eggroll import EGGROLL, PopLSTM, PopLSTMCell, PopRNN, PopRNNCell
from zoopt.eggroll.noise import noise_epoch
from zoopt.kernels import lowrank_factors
from zoopt.eggroll.update import shape_fitness

N, B, T, IN = 6, 2, 3, 5
ATOL = 1e-5


def materialized(opt, module, member):
    """Member ``member``'s weights built by hand from the keyed factors (independent of member_parameters)."""
    pair, sign = member // 2, 1.0 - 2.0 * (member % 2)
    epoch = noise_epoch(opt.generation, opt.noise_reuse)
    out = {}
    for pp in opt.plan.params:
        p = pp.param.detach()
        if pp.mode == "lowrank":
            A, Bf = lowrank_factors(opt.seed, pp.tensor_id, epoch, [pair], *p.shape, opt.rank)
            p = p + sign * opt.sigma * (A[0] @ Bf[0].T) / math.sqrt(opt.rank)
        elif pp.mode != "frozen":
            p = opt.member_parameters(member)[pp.name]
        out[pp.name] = p
    return out


def plain(opt, module, member, *args):
    return functional_call(module, materialized(opt, module, member), args)


def flat(result):
    """Output tensors of an RNN / cell call, in order: out, h_n[, c_n] (or the cell's states)."""
    if isinstance(result, torch.Tensor):
        return [result]
    out = []
    for r in result:
        out += flat(r)
    return out


def assert_members_match(pop_parts, ref_parts, where):
    for k, (got, ref) in enumerate(zip(pop_parts, ref_parts)):
        assert got.shape == ref.shape, (where, k, got.shape, ref.shape)
        assert torch.allclose(got, ref, atol=ATOL), (where, k, float((got - ref).abs().max()))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_two_layers_members_equal_materialized_weights(batch_first, bias):
    torch.manual_seed(0)
    lstm = nn.LSTM(IN, 4, num_layers=2, batch_first=batch_first, bias=bias)
    opt = EGGROLL(lstm, popsize=N, rank=2, sigma=0.3, seed=7)
    assert type(lstm) is PopLSTM
    modes = {pp.name: pp.mode for pp in opt.plan.params}
    assert modes["weight_hh_l1"] == "lowrank" and (not bias or modes["bias_ih_l0"] == "full")
    xm = torch.randn(N, B, T, IN)                                   # member i's B sequences
    to_layout = (lambda t: t) if batch_first else (lambda t: t.transpose(-3, -2))   # [B, T] <-> [T, B]
    x_member_major = to_layout(xm.reshape(N * B, T, IN))
    x_shared = to_layout(xm[0])
    h0 = torch.randn(2, B, 4)
    c0 = torch.randn(2, B, 4)
    with torch.no_grad():
        with opt.population():
            got = flat(lstm(x_member_major))
            got_hx = flat(lstm(x_member_major, (h0.repeat(1, N, 1), c0.repeat(1, N, 1))))
        with opt.population(shared=x_shared):
            got_shared = flat(lstm(x_shared, (h0, c0)))
        with opt.population():                                       # unbatched: [N * T, in]
            got_flat = flat(lstm(xm[:, 0].reshape(N * T, IN)))
        with opt.population(torch.arange(2, 5)):                     # a slice with a broken pair
            got_slice = flat(lstm(to_layout(xm[2:5].reshape(3 * B, T, IN))))
        bdim = 0 if batch_first else 1
        for i in range(N):
            ref = flat(plain(opt, lstm, i, to_layout(xm[i])))
            ref_hx = flat(plain(opt, lstm, i, to_layout(xm[i]), (h0, c0)))
            ref_shared = flat(plain(opt, lstm, i, x_shared, (h0, c0)))
            ref_flat = flat(plain(opt, lstm, i, xm[i, 0]))
            rows = slice(i * B, (i + 1) * B)
            pick = lambda parts, i=i, rows=rows: [parts[0].narrow(bdim, i * B, B), parts[1][:, rows], parts[2][:, rows]]
            assert_members_match(pick(got), ref, ("member-major", i))
            assert_members_match(pick(got_hx), ref_hx, ("hx", i))
            assert_members_match(pick(got_shared), ref_shared, ("shared", i))
            assert_members_match([got_flat[0][i * T:(i + 1) * T], got_flat[1][:, i], got_flat[2][:, i]], ref_flat,
                                 ("unbatched", i))
            if 2 <= i < 5:
                j = i - 2
                assert_members_match([got_slice[0].narrow(bdim, j * B, B), got_slice[1][:, j * B:(j + 1) * B],
                                      got_slice[2][:, j * B:(j + 1) * B]], ref, ("slice", i))
        # antithetic members differ from each other (the noise is really applied)
        assert (got[1][:, 0:B] - got[1][:, B:2 * B]).abs().max() > 1e-3


def test_bidirectional_projected_lstm_gru_and_relu_rnn():
    torch.manual_seed(1)
    mods = [nn.LSTM(IN, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True),
            nn.GRU(IN, 4, num_layers=2, bidirectional=True, batch_first=True),
            nn.RNN(IN, 4, num_layers=2, nonlinearity="relu", batch_first=True)]
    xm = torch.randn(N, B, T, IN)
    for mod in mods:
        opt = EGGROLL(mod, popsize=N, rank=1, sigma=0.3, seed=3)
        with torch.no_grad(), opt.population():
            got = flat(mod(xm.reshape(N * B, T, IN)))
        for i in range(N):
            ref = flat(plain(opt, mod, i, xm[i]))
            rows = slice(i * B, (i + 1) * B)
            assert_members_match([got[0][rows]] + [g[:, rows] for g in got[1:]], ref, (type(mod).__name__, i))
    assert type(mods[2]) is PopRNN


@pytest.mark.parametrize("cell_type", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells_members_equal_materialized_weights(cell_type):
    torch.manual_seed(2)
    cell = cell_type(IN, 4)
    opt = EGGROLL(cell, popsize=N, rank=2, sigma=0.3, seed=1)
    x = torch.randn(N, B, IN)
    h = torch.randn(N, B, 4)
    state = (h, torch.randn(N, B, 4)) if cell_type is nn.LSTMCell else h
    member_state = lambda i: tuple(s[i] for s in state) if isinstance(state, tuple) else state[i]
    all_state = tuple(s.reshape(N * B, 4) for s in state) if isinstance(state, tuple) else state.reshape(N * B, 4)
    with torch.no_grad():
        with opt.population():
            got = flat(cell(x.reshape(N * B, IN), all_state))
        with opt.population(shared=x[0]):
            got_shared = flat(cell(x[0]))
    for i in range(N):
        rows = slice(i * B, (i + 1) * B)
        assert_members_match([g[rows] for g in got], flat(plain(opt, cell, i, x[i], member_state(i))), ("cell", i))
        assert_members_match([g[rows] for g in got_shared], flat(plain(opt, cell, i, x[0])), ("shared cell", i))
    assert type(cell) in (PopLSTMCell, PopRNNCell) or cell_type is nn.GRUCell


def test_lstm_update_equals_naive_materialized_computation():
    torch.manual_seed(3)
    model = nn.LSTM(IN, 4, num_layers=2, batch_first=True)
    popsize, sigma, rank, lr = 8, 0.2, 2, 0.1
    opt = EGGROLL(model, popsize=popsize, rank=rank, sigma=sigma, lr=lr, seed=11)
    x, y = torch.randn(B, T, IN), torch.randn(B, T, 4)
    loss = lambda out, target: ((out[0] if isinstance(out, tuple) else out) - target).pow(2).mean()
    with torch.no_grad(), opt.population(shared=x):
        out = model(x)[0].view(popsize, B, T, 4)
    f = torch.stack([loss(out[i], y) for i in range(popsize)])
    naive_f = torch.stack([loss(plain(opt, model, i, x), y) for i in range(popsize)])
    assert torch.allclose(f, naive_f, atol=1e-6)
    grads = opt.gradients(f)
    shaped = shape_fitness(f, "zscore")
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    members = [materialized(opt, model, i) for i in range(popsize)]
    for name, p in params.items():
        # sigma/sqrt(N) * sum_i f_i (W_i - W)/sigma, from the materialized members
        naive = sum(shaped[i] * (members[i][name] - p) / sigma for i in range(popsize)) * sigma / math.sqrt(popsize)
        assert torch.allclose(grads[name], naive, atol=1e-5), name
        assert naive.abs().max() > 0
    opt.tell(f)
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), params[name] - lr * grads[name], atol=1e-6), name
    with torch.no_grad():                                           # the plain forward still runs after the update
        assert model(x)[0].shape == (B, T, 4)


def test_recurrent_bad_inputs_name_the_problem():
    lstm = nn.LSTM(IN, 4)
    opt = EGGROLL(lstm, popsize=4)
    with torch.no_grad(), opt.population():
        with pytest.raises(ValueError, match="multiple"):
            lstm(torch.randn(T, 3, IN))                              # 3 sequences for 4 members
        with pytest.raises(ValueError, match="initial state"):
            lstm(torch.randn(T, 4, IN), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))
        with pytest.raises(NotImplementedError, match="packed"):
            lstm(nn.utils.rnn.pack_sequence([torch.randn(2, IN)] * 4))
    opt.detach()
    assert type(lstm) is nn.LSTM
