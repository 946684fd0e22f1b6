"""The grouped, cached top-k merge against the per-module definition."""
import torch

from zoopt.merge.operator import merge_factors, sparsify
from zoopt.merge.pool import AdapterPool


def random_pool(n=4, r=2):
    g = torch.Generator().manual_seed(3)
    shapes = {"l0.q": (6, 5), "l0.down": (5, 7), "l1.q": (6, 5), "l1.down": (5, 7)}  # (d_in, d_out)
    A = {m: torch.randn(n, r, d_in, generator=g) for m, (d_in, d_out) in shapes.items()}
    B = {m: torch.randn(n, d_out, r, generator=g) for m, (d_in, d_out) in shapes.items()}
    return AdapterPool([f"a{i}" for i in range(n)], {"r": r, "lora_alpha": 2 * r}, A, B)


def reference(pool, alpha, beta):
    alpha, beta = torch.tensor(alpha), torch.tensor(beta)
    out = {}
    for m in pool.modules:
        a = sparsify(pool.A[m].contiguous(), alpha, "topk")
        out[m] = (torch.einsum("n,nrd->rd", beta, a), torch.einsum("n,ndr->dr", beta, pool.B[m]))
    return out


def test_grouped_merge_equals_per_module_definition_across_alpha_changes():
    pool = random_pool()
    before = {m: (pool.A[m].clone(), pool.B[m].clone()) for m in pool.modules}
    cases = [([1.0, 0.5, 0.0, 0.3], [0.2, -1.0, 0.7, 1.5]),
             ([1.0, 0.5, 0.0, 0.3], [-0.4, 0.1, 0.0, 1.0]),    # same alpha: the cached A stacks
             ([0.1, 1.0, 0.9, 0.05], [0.2, -1.0, 0.7, 1.5]),   # alpha changed: recomputed
             ([1.0, 0.5, 0.0, 0.3], [0.3, 0.3, 0.3, 0.3])]
    for alpha, beta in cases:
        got, want = merge_factors(pool, alpha, beta), reference(pool, alpha, beta)
        assert set(got) == set(pool.modules)
        for m in pool.modules:
            assert torch.allclose(got[m][0], want[m][0], atol=1e-6)
            assert torch.allclose(got[m][1], want[m][1], atol=1e-6)
    for m in pool.modules:  # the pool's tensors are unchanged (now views of the stacks)
        assert torch.equal(pool.A[m], before[m][0]) and torch.equal(pool.B[m], before[m][1])
    # a zero keep-fraction removes A_i entirely; B_i still counts
    got = merge_factors(pool, [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0])
    assert all(float(got[m][0].abs().max()) == 0.0 for m in pool.modules)
    assert torch.allclose(got["l0.q"][1], pool.B["l0.q"][0])
