"""The fast paths of PolyStep's staged evaluator equal their references: the compiled LIF tail of the zoo
SNN, the per-candidate cross-entropy, the padded narrow linear layer, and the evaluator with and
without the compiled kernel."""
import pytest
import torch
from torch import nn

import zoopt
from zoopt.kernels import fused_tails
from zoopt.polystep.evaluate import _cross_entropy_means, _narrow_linear
from zoopt.problems.zoo import make_model
from zoopt.problems.zoo.layers import LIFHidden, LIFReadout

needs_lib = pytest.mark.skipif(not fused_tails.available(), reason="no C compiler for the LIF kernel")


def _readout(hidden, classes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    layer = LIFReadout(hidden, classes).to(dtype)
    with torch.no_grad():  # multiples of 1/64: every order of summing them is exact, so counts must match bit for bit
        layer.weight.copy_(torch.randint(-12, 13, (classes, hidden), generator=g).to(dtype) / 64)
        layer.bias.copy_(torch.randint(-8, 9, (classes,), generator=g).to(dtype) / 64)
    return layer


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,hidden,classes,steps", [(37, 20, 3, 5), (512, 128, 10, 15), (16, 1, 1, 1)])
def test_fused_lif_tail_equals_the_torch_forward(dtype, rows, hidden, classes, steps):
    g = torch.Generator().manual_seed(rows + hidden)
    current = (torch.randn(rows, hidden, generator=g) * 0.6 + 0.2).to(dtype)
    current[0, 0] = 1.0   # fires at the first step exactly at threshold
    current[-1, -1] = -2.0
    lif = LIFHidden(steps=steps)
    readout = _readout(hidden, classes, dtype, seed=rows)
    reference = readout(lif(current))
    fused = lif.zoopt_fused_tail([readout])
    got = fused(current)
    assert got.dtype == dtype and got.shape == (rows, classes)
    assert torch.equal(got, reference)
    if hidden > 1:
        assert reference.sum() > 0 and (reference < steps).any()  # spikes happened, not everywhere
    # the random-weight case the evaluator meets: equal to rounding of the readout sums
    readout2 = LIFReadout(hidden, classes).to(dtype)
    assert (lif.zoopt_fused_tail([readout2])(current) - readout2(lif(current))).abs().max() <= 1


def test_fused_tail_only_for_the_hard_lif_pair():
    lif, readout = LIFHidden(steps=3), LIFReadout(4, 2)
    assert lif.zoopt_fused_tail([readout, nn.Identity()]) is None
    assert lif.zoopt_fused_tail([nn.Linear(4, 2)]) is None
    assert LIFHidden(steps=3, smooth=True).zoopt_fused_tail([readout]) is None
    assert lif.zoopt_fused_tail([LIFReadout(4, 2, smooth=True)]) is None
    if fused_tails.available():  # a dtype the kernel does not take runs the torch forward
        current = torch.randn(5, 4).to(torch.bfloat16)
        out = lif.zoopt_fused_tail([readout.to(torch.bfloat16)])(current)
        assert torch.equal(out, readout(lif(current)))


def test_cross_entropy_means_equal_the_vmapped_loss():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 40, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (40,), generator=g)
    loss = nn.CrossEntropyLoss()
    reference = torch.vmap(lambda o: loss(o, y))(out)
    assert torch.allclose(_cross_entropy_means(loss, out, y), reference, rtol=0, atol=1e-12)
    assert torch.allclose(_cross_entropy_means(nn.functional.cross_entropy, out, y), reference, rtol=0, atol=1e-12)
    assert _cross_entropy_means(nn.CrossEntropyLoss(weight=torch.ones(7, dtype=torch.float64)), out, y) is None
    assert _cross_entropy_means(nn.CrossEntropyLoss(label_smoothing=0.1), out, y) is None
    assert _cross_entropy_means(nn.CrossEntropyLoss(reduction="sum"), out, y) is None
    assert _cross_entropy_means(nn.MSELoss(), out, y) is None
    y_ignored = y.clone()
    y_ignored[3] = -100
    assert _cross_entropy_means(loss, out, y_ignored) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_narrow_linear_equals_the_layer(dtype):
    layer = nn.Linear(12, 5).to(dtype)
    h = torch.randn(33, 12, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(_narrow_linear(layer)(h), layer(h), rtol=0, atol=tol)
    wide = nn.Linear(12, 20)
    assert _narrow_linear(wide) is wide
    no_bias = nn.Linear(12, 3, bias=False).to(dtype)
    assert torch.allclose(_narrow_linear(no_bias)(h), no_bias(h), rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["snn", "mlp"])
def test_evaluator_with_and_without_the_compiled_kernel(name, monkeypatch):
    kw = dict(steps=4) if name == "snn" else {}
    model = make_model(name, in_features=12, num_classes=3, hidden=6, seed=5, **kw).double()
    x, y = torch.randn(10, 12, dtype=torch.float64) * 2, torch.randint(0, 3, (10,))
    loss = nn.CrossEntropyLoss()

    def costs():
        opt = zoopt.PolyStep(model, rank=2, seed=1, epsilon=0.5, step_radius=2.0, probe_radius=3.0, compile=False)
        prop = opt.stepper.propose()
        return opt.block_evaluator.losses(x, y, loss, prop.offsets, opt.theta())

    fast = costs()
    monkeypatch.setattr(fused_tails, "available", lambda: False)
    plain = costs()
    assert torch.allclose(fast, plain, rtol=0, atol=1e-12)
    assert fast.std() > 0


def _relu_linear_reference(pre, xa, crow, col, vals, coeffs, weight, bias, antipodal, relu):
    parts, m, d = coeffs.shape
    hidden, batch = pre.shape
    dense = torch.zeros(parts * d * hidden, xa.shape[0], dtype=pre.dtype)
    for r in range(parts * d * hidden):
        for k in range(int(crow[r]), int(crow[r + 1])):
            dense[r, col[k]] += vals[k]
    resp = (dense @ xa).reshape(parts, d, hidden, batch)
    change = torch.einsum("pmd,pdhb->pmhb", coeffs, resp)
    act = torch.relu if relu else (lambda t: t)
    hs = [act(pre + change)] + ([act(pre - change)] if antipodal else [])
    return torch.einsum("ch,pnhb->pncb", weight, torch.cat(hs, dim=1)) + bias[:, None]


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d,batch,antipodal,relu", [(8, 48, True, True), (3, 21, False, True), (8, 5, True, False)])
def test_relu_linear_csr_equals_dense_responses(dtype, d, batch, antipodal, relu):
    g = torch.Generator().manual_seed(d * batch)
    parts, m, hidden, classes, k_in = 2, 4, 7, 12, 9
    rows = parts * d * hidden
    nnz = torch.randint(0, 4, (rows,), generator=g)
    nnz[3] = 0  # an empty row (padding coordinates)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), nnz.cumsum(0)])
    col = torch.randint(0, k_in, (int(crow[-1]),), generator=g)
    vals = torch.randn(int(crow[-1]), generator=g).to(dtype)
    pre = torch.randn(hidden, batch, generator=g).to(dtype)
    xa = torch.randn(k_in, batch, generator=g).to(dtype)
    coeffs = torch.randn(parts, m, d, generator=g).to(dtype)
    weight, bias = torch.randn(classes, hidden, generator=g).to(dtype), torch.randn(classes, generator=g).to(dtype)
    got = fused_tails.relu_linear_csr(pre, xa, crow, col, vals, coeffs, weight, bias, antipodal, relu)
    ref = _relu_linear_reference(pre, xa, crow, col, vals, coeffs, weight, bias, antipodal, relu)
    assert got.shape == (parts, 2 * m if antipodal else m, classes, batch)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got, ref, rtol=0, atol=tol)
    with pytest.raises(ValueError):
        fused_tails.relu_linear_csr(pre, xa, crow, col.clamp_min(k_in), vals, coeffs, weight, bias, antipodal, relu)


@needs_lib
@pytest.mark.parametrize("batch,antipodal", [(512, True), (37, False)])
def test_relu_linear_csr_cross_entropy_equals_torch(batch, antipodal):
    g = torch.Generator().manual_seed(batch)
    parts, m, d, hidden, classes, k_in = 3, 4, 8, 16, 10, 20
    rows = parts * d * hidden
    nnz = torch.randint(1, 4, (rows,), generator=g)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), nnz.cumsum(0)])
    col = torch.randint(0, k_in, (int(crow[-1]),), generator=g)
    vals = torch.randn(int(crow[-1]), generator=g)
    pre, xa = torch.randn(hidden, batch, generator=g), torch.randn(k_in, batch, generator=g)
    coeffs = torch.randn(parts, m, d, generator=g)
    weight, bias = torch.randn(classes, hidden, generator=g) * 0.1, torch.randn(classes, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    logits = fused_tails.relu_linear_csr(pre, xa, crow, col, vals, coeffs, weight, bias, antipodal)
    got = fused_tails.relu_linear_csr(pre, xa, crow, col, vals, coeffs, weight, bias, antipodal, labels=y)
    flat = logits.reshape(-1, classes, batch)
    ref = torch.stack([nn.functional.cross_entropy(o.T, y) for o in flat]).reshape(got.shape)
    assert got.dtype == torch.float32 and ref.std() > 0.01 and 1 < ref.mean() < 10
    assert torch.allclose(got, ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        fused_tails.relu_linear_csr(pre, xa, crow, col, vals, coeffs, weight, bias, antipodal, labels=y + classes)


@needs_lib
def test_kernels_give_the_same_bits_on_any_number_of_threads():
    g = torch.Generator().manual_seed(0)
    current = torch.randn(16 * 9 + 5, 12, generator=g) + 0.4
    readout = _readout(12, 3, torch.float32, seed=1)
    parts, m, d, hidden, classes, k_in, batch = 5, 4, 8, 6, 10, 9, 40
    nnz = torch.randint(1, 4, (parts * d * hidden,), generator=g)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), nnz.cumsum(0)])
    col = torch.randint(0, k_in, (int(crow[-1]),), generator=g)
    args = (torch.randn(hidden, batch, generator=g), torch.randn(k_in, batch, generator=g), crow, col,
            torch.randn(int(crow[-1]), generator=g), torch.randn(parts, m, d, generator=g),
            torch.randn(classes, hidden, generator=g) * 0.1, torch.randn(classes, generator=g), True)
    y = torch.randint(0, classes, (batch,), generator=g)
    before, out = torch.get_num_threads(), {}
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            out[threads] = (fused_tails.lif_counts(current, readout.weight, readout.bias, 6, 0.95, 1.0, 0.9, 1.0),
                            fused_tails.relu_linear_csr(*args), fused_tails.relu_linear_csr(*args, labels=y))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(out[1], out[3]))


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_responses_equal_the_dense_product(dtype):
    g = torch.Generator().manual_seed(3)
    n, d_out, k_in, batch = 5, 7, 11, 37
    nnz = torch.randint(0, 4, (n * d_out,), generator=g)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), nnz.cumsum(0)])
    col = torch.randint(0, k_in, (int(crow[-1]),), generator=g)
    vals = torch.randn(int(crow[-1]), generator=g).to(dtype)
    xa = torch.randn(k_in, batch, generator=g).to(dtype)
    dense = torch.zeros(n * d_out, k_in, dtype=dtype)
    for r in range(n * d_out):
        for k in range(int(crow[r]), int(crow[r + 1])):
            dense[r, col[k]] += vals[k]
    ref = (dense @ xa).reshape(n, d_out, batch).transpose(1, 2)
    got = fused_tails.csr_responses(xa, crow, col, vals, d_out)
    assert got.shape == (n, batch, d_out)
    assert torch.allclose(got, ref, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_lif_readout_is_an_affine_stage_with_lif_counts():
    readout = LIFReadout(6, 3)
    spikes = (torch.rand(4, 5, 6) < 0.4).float()
    assert readout.zoopt_affine and torch.equal(readout(spikes), readout.activation(nn.functional.linear(
        spikes, readout.weight, readout.bias)))
