"""CPU-side tests of the kernels' reference functions: low-rank factor layout and the
population correction, keyed Haar rotations and vertex offsets, keyed integer noise,
and the backend dispatch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zoopt.kernels as K
from zoopt.kernels import backend as B

SEED, TID, GEN = 0xDEADBEEF_0123, 17, 4


# ---- low-rank factors -------------------------------------------------------------------------

def test_lowrank_factors_layout_is_the_keyed_stream():
    m, n, r = 5, 3, 2
    a, b = K.lowrank_factors(SEED, TID, GEN, [0, 4, 9], m, n, r)
    flat = K.normal(SEED, TID, GEN, [0, 4, 9], (m + n) * r)
    torch.testing.assert_close(torch.cat([b, a], 1).reshape(3, -1), flat, rtol=0, atol=0)
    assert a.shape == (3, m, r) and b.shape == (3, n, r)
    # B[j, c] is element j*r + c, A[i, c] is element (n + i)*r + c of the pair's stream
    assert b[1, 2, 1] == flat[1, 2 * r + 1] and a[2, 1, 0] == flat[2, (n + 1) * r]


def test_lowrank_factors_slices_regenerate_the_population():
    whole = K.lowrank_factors(SEED, TID, GEN, range(8), 6, 4, 1)
    part = K.lowrank_factors(SEED, TID, GEN, [6, 1], 6, 4, 1)
    for p, w in zip(part, whole):
        torch.testing.assert_close(p, w[[6, 1]], rtol=0, atol=0)
    other = K.lowrank_factors(SEED, TID + 1, GEN, range(8), 6, 4, 1)
    assert not torch.allclose(other[0], whole[0])


def test_lowrank_factors_numpy_and_torch_agree():
    ref = K.lowrank_factors(SEED, TID, GEN, [3, 5], 7, 9, 4, backend="numpy", dtype=torch.float64)
    got = K.lowrank_factors(SEED, TID, GEN, [3, 5], 7, 9, 4, backend="torch", dtype=torch.float64)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [dict(m=0), dict(n=-1), dict(r=1.5)])
def test_lowrank_factors_rejects_bad_dims(bad):
    dims = dict(m=3, n=4, r=1) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        K.lowrank_factors(SEED, TID, GEN, [0], **dims)


def test_antithetic_pairs():
    pairs, signs = K.antithetic_pairs([0, 1, 2, 7])
    assert pairs.tolist() == [0, 0, 1, 3] and signs.tolist() == [1, -1, 1, -1]
    assert torch.equal(K.antithetic_pairs(torch.tensor([5]))[0], torch.tensor([2]))
    with pytest.raises(ValueError, match="members"):
        K.antithetic_pairs([-1])


@pytest.mark.parametrize("shape_rows", [None, 3])
def test_lowrank_correction_equals_dense_member_weights(shape_rows):
    m, n, r, members = 6, 5, 2, 6
    rng = np.random.default_rng(0)
    x_shape = (members, n) if shape_rows is None else (members, shape_rows, n)
    x = torch.from_numpy(rng.standard_normal(x_shape))
    x[1] = x[0]  # members 0 and 1 are an antithetic pair on the same input
    w = torch.from_numpy(rng.standard_normal((m, n)))
    out = x @ w.T
    pairs, signs = K.antithetic_pairs(range(members))
    sigma = 0.2
    scales = signs * sigma / math.sqrt(r)
    res = K.lowrank_correction(out, x, SEED, TID, GEN, pairs, scales, r, backend="torch")
    assert res is out
    a, b = K.lowrank_factors(SEED, TID, GEN, pairs, m, n, r, dtype=torch.float64)
    for i in range(members):
        wi = w + scales[i] * a[i] @ b[i].T  # EGGROLL member weight W + s sigma A B^T / sqrt(r)
        torch.testing.assert_close(out[i], x[i] @ wi.T)
    # antithetic partners move the output in opposite directions
    base = x @ w.T
    torch.testing.assert_close(out[0] - base[0], -(out[1] - base[1]))


def test_lowrank_correction_cpu_ignores_fused_and_checks_shapes():
    x, out = torch.ones(2, 4), torch.zeros(2, 3)
    a = K.lowrank_correction(out.clone(), x, 1, 2, 3, [0, 0], [1.0, -1.0], 1, fused=True)
    b = K.lowrank_correction(out.clone(), x, 1, 2, 3, [0, 0], [1.0, -1.0], 1, fused=False)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pairs and scales"):
        K.lowrank_correction(out, x, 1, 2, 3, [0], [1.0], 1)
    with pytest.raises(ValueError, match="must agree"):
        K.lowrank_correction(out, torch.ones(3, 4), 1, 2, 3, [0, 0], [1.0, -1.0], 1)
    with pytest.raises(ValueError, match="fused"):
        K.lowrank_correction(out, x, 1, 2, 3, [0, 0], [1.0, -1.0], 1, fused="yes")


# ---- rotations ------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 3, 4, 7, 8, 12])
def test_rotations_are_special_orthogonal(d):
    rot = K.haar_rotations_numpy(SEED, TID, GEN, np.arange(200), d)
    assert rot.shape == (200, d, d)
    np.testing.assert_allclose(np.einsum("pab,pac->pbc", rot, rot), np.broadcast_to(np.eye(d), (200, d, d)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    assert K.normals_per_rotation(d) == d * (d + 1) // 2 - 1


def test_rotations_slices_backends_and_keys():
    whole = K.haar_rotations(SEED, TID, GEN, range(10), 5, dtype=torch.float64, backend="numpy")
    part = K.haar_rotations(SEED, TID, GEN, [7, 2], 5, dtype=torch.float64, backend="numpy")
    torch.testing.assert_close(part, whole[[7, 2]], rtol=0, atol=0)
    via_torch = K.haar_rotations(SEED, TID, GEN, range(10), 5, dtype=torch.float64, backend="torch")
    torch.testing.assert_close(via_torch, whole, rtol=0, atol=1e-4)  # torch normals are float32
    other = K.haar_rotations(SEED, TID, GEN + 1, range(10), 5, dtype=torch.float64, backend="numpy")
    assert (other - whole).abs().max() > 0.1


def test_rotations_are_haar_on_so3():
    rot = K.haar_rotations_numpy(7, 1, 0, np.arange(20000), 3)
    # Haar on SO(3): E[R] = 0, E[R_ab^2] = 1/3, E[tr R] = 0, E[(tr R)^2] = 1, E[R_00^4] = 3/15
    assert np.abs(rot.mean(0)).max() < 0.015
    np.testing.assert_allclose((rot ** 2).mean(0), 1 / 3, atol=0.01)
    tr = np.trace(rot, axis1=1, axis2=2)
    assert abs(tr.mean()) < 0.03 and abs((tr ** 2).mean() - 1.0) < 0.04
    assert abs((rot[:, 0, 0] ** 4).mean() - 0.2) < 0.01


def test_rotations_in_so2_have_uniform_angle():
    rot = K.haar_rotations_numpy(3, 2, 1, np.arange(16000), 2)
    np.testing.assert_allclose(rot[:, 0, 0], rot[:, 1, 1], atol=1e-12)  # rotations, not reflections
    angle = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    counts = np.histogram(angle, bins=8, range=(-np.pi, np.pi))[0]
    assert np.abs(counts / 2000 - 1).max() < 0.08


def test_rotation_input_checks():
    with pytest.raises(ValueError, match="d must be"):
        K.haar_rotations(1, 1, 1, [0], 0)
    with pytest.raises(ValueError, match="seed"):
        K.haar_rotations(-1, 1, 1, [0], 3)


def test_vertex_offsets_rotate_the_template():
    d = 4
    rot = K.haar_rotations(SEED, TID, GEN, range(6), d)
    orthoplex = torch.cat([torch.eye(d), -torch.eye(d)])
    off = K.vertex_offsets(rot, orthoplex, radius=0.3)
    assert off.shape == (6, 2 * d, d)
    # vertex k is +radius * column k of R_i, vertex d + k its opposite
    torch.testing.assert_close(off[:, :d], 0.3 * rot.transpose(1, 2))
    torch.testing.assert_close(off[:, d:], -off[:, :d])
    torch.testing.assert_close(off.norm(dim=-1), torch.full((6, 2 * d), 0.3))
    # the numpy ground truth gives the same offsets (one step's geometry: zoopt.polystep.particles)
    off_np = K.vertex_offsets(K.haar_rotations(SEED, TID, GEN, range(6), d, backend="numpy"), orthoplex, 0.3)
    torch.testing.assert_close(off_np, off)
    with pytest.raises(ValueError, match="template"):
        K.vertex_offsets(rot, torch.eye(3), 1.0)


# ---- integer noise -----------------------------------------------------------------------------

def test_int_thresholds_give_a_symmetric_discretised_normal():
    t = K.int_thresholds(16.0, 127).astype(np.int64)
    assert t.shape == (254,) and np.all(np.diff(t) >= 0) and t[-1] <= 2 ** 24
    np.testing.assert_array_equal(t + t[::-1], 2 ** 24)
    p = K.int_probabilities(16.0, 127)
    assert p.shape == (255,) and abs(p.sum() - 1) < 1e-12
    np.testing.assert_array_equal(p, p[::-1])
    values = np.arange(-127, 128)
    phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))
    expect = np.array([phi((v + 0.5) / 16) - phi((v - 0.5) / 16) for v in values])
    np.testing.assert_allclose(p, expect, atol=2 ** -23)
    assert abs((p * values ** 2).sum() - (256 + 1 / 12)) < 0.01  # variance of round(16 z)


def test_int_noise_range_distribution_and_backends():
    vals = K.int_noise_numpy(SEED, TID, GEN, range(8), 1 << 16)
    assert vals.dtype == np.int8 and vals.shape == (8, 1 << 16)
    assert vals.min() >= -127 and vals.max() <= 127
    counts = np.bincount(vals.ravel().astype(np.int64) + 127, minlength=255)
    p = K.int_probabilities()
    expected = p * vals.size
    keep = expected > 20
    chi2 = (((counts - expected) ** 2)[keep] / expected[keep]).sum()
    assert chi2 < keep.sum() + 5 * math.sqrt(2 * keep.sum())  # mean dof, +5 sd
    assert abs(vals.mean()) < 0.08 and abs(vals.astype(np.float64).std() - 16.0026) < 0.06
    torch_vals = K.int_noise(SEED, TID, GEN, [2, 5], 1 << 13, backend="torch")
    np.testing.assert_array_equal(torch_vals.numpy(), vals[[2, 5], :1 << 13])


def test_int_noise_slices_and_small_tables():
    whole = K.int_noise(1, 2, 3, range(5), 40, scale=2.0, clip=3, backend="numpy")
    part = K.int_noise(1, 2, 3, [4, 1], 13, start=9, scale=2.0, clip=3)
    np.testing.assert_array_equal(part.numpy(), whole.numpy()[[4, 1], 9:22])
    assert set(np.unique(whole.numpy())) <= set(range(-3, 4))
    with pytest.raises(ValueError, match="clip"):
        K.int_noise(1, 2, 3, [0], 4, clip=128)
    with pytest.raises(ValueError, match="scale"):
        K.int_noise(1, 2, 3, [0], 4, scale=0.0)


# ---- dispatch ------------------------------------------------------------------------------------

def test_backend_resolution():
    assert B.resolve("auto", "cpu") == "torch"
    assert B.resolve("numpy", None) == "numpy"
    with pytest.raises(ValueError, match="backend"):
        B.resolve("jax", "cpu")
    with pytest.raises(ValueError, match="CUDA device"):
        K.normal(1, 2, 3, [0], 8, backend="cupy")
    if not B.cupy_available():
        with pytest.raises(RuntimeError, match="CuPy"):
            B.resolve("cupy", "cuda")
        assert B.resolve("auto", "cuda") == "torch"


def test_normal_backends_agree():
    ref = K.normal(SEED, TID, GEN, [0, 2], 33, start=3, backend="numpy")
    torch.testing.assert_close(ref, torch.from_numpy(K.normal_numpy(SEED, TID, GEN, [0, 2], 33, 3)))
    torch.testing.assert_close(K.normal(SEED, TID, GEN, [0, 2], 33, start=3), ref, rtol=1e-4, atol=1e-4)


def test_auto_picks_cupy_only_for_cuda_devices(monkeypatch):
    monkeypatch.setattr(B, "cupy_available", lambda: True)
    assert B.resolve("auto", "cuda") == "cupy"
    assert B.resolve("auto", torch.device("cuda", 1)) == "cupy"
    assert B.resolve("auto", "cpu") == "torch"
    assert B.resolve("torch", "cuda") == "torch"  # explicit backend overrides


def test_bench_script_refuses_cpu_clearly(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    import runpy
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_kernels.py"
    main = runpy.run_path(str(script), run_name="bench_kernels")["main"]
    assert main([]) == 1
    assert "Nothing was measured" in capsys.readouterr().err


@pytest.mark.parametrize("scale,clip,start,numel", [(16.0, 127, 0, 4096), (2.0, 3, 9, 13), (0.3, 1, 5, 999),
                                                    (100.0, 127, 3, 7)])
def test_int_noise_compiled_torch_and_numpy_agree(monkeypatch, scale, clip, start, numel):
    from zoopt.kernels import philox_c
    if not philox_c.available():
        pytest.skip("no C compiler")
    pairs = [0, 5, 2 ** 32 - 1]
    ref = K.int_noise_numpy(SEED, TID, GEN, pairs, numel, start, scale, clip)
    compiled = K.int_noise(SEED, TID, GEN, pairs, numel, start, scale, clip)
    monkeypatch.setenv("ZOOPT_NO_CEXT", "1")   # the torch implementation
    plain = K.int_noise(SEED, TID, GEN, pairs, numel, start, scale, clip)
    np.testing.assert_array_equal(compiled.numpy(), ref)
    np.testing.assert_array_equal(plain.numpy(), ref)
