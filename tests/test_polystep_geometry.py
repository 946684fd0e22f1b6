"""PolyStep geometry and plans: templates, Haar rotations, softmax/Sinkhorn, barycentric step."""
import math

import pytest
import torch

from zoopt import kernels as K
from zoopt.polystep.geometry import (ROTATION_TENSOR_ID, biased_rotations, cube_vertices, jitter_uniform,
                                     num_vertices, orthoplex_vertices, polytope_vertices, probe_offsets,
                                     probe_points, probe_scales, rotated_vertices, simplex_vertices, step_rotations)
from zoopt.polystep.plans import (barycentric_step, normalize_rows, sanitize_costs, sinkhorn_plan,
                                  softmax_plan, template_step)


# -- templates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["orthoplex", "simplex", "cube"])
@pytest.mark.parametrize("d", [1, 2, 3, 8])
def test_templates_unit_radius_centred_and_counted(name, d):
    u = polytope_vertices(name, d, dtype=torch.float64)
    assert u.shape == (num_vertices(name, d), d)
    assert torch.allclose(u.norm(dim=1), torch.ones(len(u), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(u.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
    assert len(torch.unique(u, dim=0)) == len(u)


def test_orthoplex_layout():
    u = orthoplex_vertices(3)
    assert torch.equal(u[:3], torch.eye(3)) and torch.equal(u[3:], -torch.eye(3))


@pytest.mark.parametrize("d", [2, 3, 5, 8])
def test_simplex_is_regular(d):
    u = simplex_vertices(d, dtype=torch.float64)
    gram = u @ u.T
    off = gram[~torch.eye(d + 1, dtype=torch.bool)]
    # regular simplex with unit vertices: every pair has inner product -1/d
    assert torch.allclose(off, torch.full_like(off, -1.0 / d), atol=1e-12)


def test_cube_signs():
    u = cube_vertices(3, dtype=torch.float64) * math.sqrt(3)
    assert set(map(tuple, u.abs().tolist())) == {(1.0, 1.0, 1.0)}
    assert torch.equal(u[5], torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))  # 5 = 0b101


def test_template_errors():
    with pytest.raises(ValueError, match="polytope"):
        polytope_vertices("hexagon", 2)
    with pytest.raises(ValueError, match="dim"):
        orthoplex_vertices(0)
    with pytest.raises(ValueError, match="cube"):
        cube_vertices(17)


# -- rotations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 3, 8])
def test_rotations_orthogonal_det_one(d):
    r = step_rotations(0, 2, range(200), d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64).expand(200, d, d)
    assert torch.allclose(r.transpose(1, 2) @ r, eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(r), torch.ones(200, dtype=torch.float64), atol=1e-10)


def test_step_rotations_are_the_keyed_kernel_and_a_pure_function_of_seed_step_particle():
    whole = step_rotations(5, 11, range(30), 4)
    assert torch.equal(whole, K.haar_rotations(5, ROTATION_TENSOR_ID, 11, range(30), 4))
    assert torch.equal(whole[[12, 3, 29]], step_rotations(5, 11, [12, 3, 29], 4))  # any subset, any order
    assert not torch.equal(step_rotations(5, 12, range(30), 4), whole)
    assert not torch.equal(step_rotations(6, 11, range(30), 4), whole)
    ref = torch.from_numpy(K.haar_rotations_numpy(5, ROTATION_TENSOR_ID, 11, range(30), 4)).float()
    assert torch.allclose(whole, ref, atol=1e-6)


def test_jitter_uniform_is_keyed_and_spread():
    u = [jitter_uniform(3, t) for t in range(400)]
    assert u == [jitter_uniform(3, t) for t in range(400)] and u != [jitter_uniform(4, t) for t in range(400)]
    assert min(u) >= 0 and max(u) < 1 and abs(sum(u) / 400 - 0.5) < 0.05


@pytest.mark.parametrize("d", [2, 3, 8])
def test_haar_distribution_sanity(d):
    """Haar on SO(d): E[R] = 0, the first column is uniform on the sphere (E[x x^T] = I/d),
    and tr(R) has mean 0 and variance 1 (d >= 3) or 2 (d = 2) -- moments of the Haar measure."""
    n = 20_000
    r = step_rotations(1, 3, range(n), d, dtype=torch.float64)
    assert r.mean(0).abs().max() < 4.5 / math.sqrt(n)
    col = r[:, :, 0]
    second = col.T @ col / n
    assert (second - torch.eye(d, dtype=torch.float64) / d).abs().max() < 4.5 / (d * math.sqrt(n)) * math.sqrt(2)
    tr = torch.diagonal(r, dim1=1, dim2=2).sum(1)
    assert abs(float(tr.mean())) < 0.05
    assert abs(float(tr.var()) - (2.0 if d == 2 else 1.0)) < 0.08


def test_biased_rotation_aligns_first_column():
    g = torch.Generator().manual_seed(0)
    r = step_rotations(0, 0, range(64), 8, dtype=torch.float64)
    dirs = torch.randn(64, 8, generator=g, dtype=torch.float64)
    dirs[5] = 0.0
    dirs[6] = float("nan")
    b = biased_rotations(r, dirs)
    unit = dirs / dirs.norm(dim=1, keepdim=True)
    ok = torch.ones(64, dtype=torch.bool)
    ok[5] = ok[6] = False
    assert torch.allclose(b[ok][:, :, 0], unit[ok], atol=1e-10)
    assert torch.equal(b[5], r[5]) and torch.equal(b[6], r[6])
    assert torch.allclose(torch.linalg.det(b), torch.ones(64, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(b.transpose(1, 2) @ b, torch.eye(8, dtype=torch.float64).expand(64, 8, 8), atol=1e-10)


def test_probe_points_geometry():
    u = orthoplex_vertices(4, dtype=torch.float64)
    r = step_rotations(0, 0, range(6), 4, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(probe_scales(3), torch.tensor([0.25, 0.5, 0.75]))
    pts = probe_points(x, u, r, 2.0, num_probes=3)
    assert pts.shape == (6, 8, 3, 4)
    dist = (pts - x[:, None, None, :]).norm(dim=-1)
    assert torch.allclose(dist, torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64).expand(6, 8, 3))
    verts = rotated_vertices(u, r)
    assert torch.allclose(verts[:, 0], r[:, :, 0]) and torch.allclose(verts[:, 4], -r[:, :, 0])
    per = probe_offsets(u, r, torch.arange(1.0, 7.0, dtype=torch.float64), num_probes=1)
    assert torch.allclose(per.norm(dim=-1)[:, :, 0], (torch.arange(1.0, 7.0, dtype=torch.float64) / 2)[:, None].expand(6, 8))


# -- plans ---------------------------------------------------------------------------------------

def _costs(p=7, v=5, seed=0):
    return torch.rand(p, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_softmax_plan_rows_and_formula():
    c = _costs()
    w = softmax_plan(c, 0.3)
    assert torch.allclose(w.sum(1), torch.ones(7, dtype=torch.float64))
    ref = torch.exp(-c / 0.3) / torch.exp(-c / 0.3).sum(1, keepdim=True)
    assert torch.allclose(w, ref)
    assert torch.allclose(softmax_plan(c * 4, 0.3, scale_cost=4.0), w)
    assert torch.allclose(softmax_plan(c, 0.3, scale_cost="max_cost"), softmax_plan(c / c.abs().max(), 0.3))
    with pytest.raises(ValueError, match="eps"):
        softmax_plan(c, 0.0)
    with pytest.raises(ValueError, match="scale_cost"):
        softmax_plan(c, 1.0, scale_cost="median")


def test_sinkhorn_marginals_and_warm_start():
    c = _costs(9, 6)
    res = sinkhorn_plan(c, 0.1, threshold=1e-10, max_iter=5000)
    assert res.converged
    assert torch.allclose(res.plan.sum(1), torch.full((9,), 1 / 9, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(res.plan.sum(0), torch.full((6,), 1 / 6, dtype=torch.float64), atol=1e-12)
    ref = torch.exp((res.f[:, None] + res.g[None, :] - c) / 0.1)
    assert torch.allclose(res.plan, ref)
    warm = sinkhorn_plan(c + 1e-3 * _costs(9, 6, seed=1), 0.1, f_init=res.f, g_init=res.g, threshold=1e-10,
                         max_iter=5000)
    cold = sinkhorn_plan(c + 1e-3 * _costs(9, 6, seed=1), 0.1, threshold=1e-10, max_iter=5000)
    assert warm.converged and warm.iterations < cold.iterations
    assert torch.allclose(warm.plan, cold.plan, atol=1e-9)


def test_sinkhorn_large_eps_is_uniform_and_small_eps_is_assignment():
    c = _costs(4, 4)
    flat = sinkhorn_plan(c, 1e4)
    assert torch.allclose(flat.plan, torch.full((4, 4), 1 / 16, dtype=torch.float64), atol=1e-5)
    sharp = sinkhorn_plan(c, 1e-3, threshold=1e-9, max_iter=20000)
    # near a permutation: each row puts almost all its mass on one column
    assert (sharp.plan.max(1).values * 4 > 0.99).all()


def test_sanitize_costs():
    c = torch.tensor([[1.0, float("nan")], [-3.0, float("inf")]])
    clean, n = sanitize_costs(c)
    assert n == 2 and clean[0, 1] == 1e6 and clean[1, 1] == 1e6
    big = torch.tensor([[1e7, float("-inf")]])
    assert sanitize_costs(big)[0][0, 1] == 2e7 + 1
    assert sanitize_costs(torch.tensor([[1, 2]], dtype=torch.float16))[0].dtype == torch.float32


def test_barycentric_step_bounded_by_alpha():
    g = torch.Generator().manual_seed(4)
    for step, (name, d) in enumerate([("orthoplex", 8), ("simplex", 4), ("cube", 3), ("orthoplex", 2)]):
        u = polytope_vertices(name, d)
        r = step_rotations(4, step, range(500), d)
        w = softmax_plan(torch.randn(500, len(u), generator=g) * 5, 0.05)
        alpha = torch.rand(500, generator=g) * 3
        delta = barycentric_step(w, u, r, alpha)
        assert (delta.norm(dim=1) <= alpha * (1 + 1e-5)).all()
        # one-hot weights move exactly alpha along the chosen rotated vertex
        onehot = torch.zeros(500, len(u))
        onehot[:, 0] = 1.0
        assert torch.allclose(barycentric_step(onehot, u, r, 1.5), 1.5 * (r @ u[0]), atol=1e-6)


def test_orthoplex_step_is_signed_difference_and_rows_normalized():
    u = orthoplex_vertices(3, dtype=torch.float64)
    w = torch.tensor([[0.5, 0.1, 0.0, 0.1, 0.2, 0.1]], dtype=torch.float64)
    assert torch.allclose(template_step(w, u), torch.tensor([[0.4, -0.1, -0.1]], dtype=torch.float64))
    # unnormalized rows (a Sinkhorn plan) give the same step
    assert torch.allclose(template_step(w / 17, u), template_step(w, u))
    assert torch.allclose(normalize_rows(torch.zeros(1, 4)), torch.full((1, 4), 0.25))
