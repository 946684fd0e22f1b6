"""GPU tests of the CuPy kernels against the numpy/torch reference.

Skipped unless CuPy sees a CUDA device and torch has CUDA. Raw bits and integer
noise must be identical; float outputs equal the float64 reference to float32
rounding (bfloat16: to one bf16 rounding).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zoopt.kernels as K
from zoopt.kernels.backend import cupy_available

pytestmark = pytest.mark.skipif(not (cupy_available() and torch.cuda.is_available()),
                                reason="needs CuPy with a CUDA device and a CUDA build of torch")

DEV = torch.device("cuda")


def _cb():
    from zoopt.kernels import cupy_backend
    return cupy_backend


def _keys(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, 2 ** 63)) * 2 + int(rng.integers(0, 2)), int(rng.integers(0, 2 ** 32)),
             int(rng.integers(0, 2 ** 32)), rng) for _ in range(count)]


def test_raw_bits_equal_reference_on_random_keys_and_shapes():
    for seed, tid, gen, rng in _keys(6):
        pairs = rng.integers(0, 2 ** 32, int(rng.integers(1, 40)))
        blocks = rng.integers(0, 2 ** 32, int(rng.integers(1, 300)))
        got = _cb().raw_bits(seed, tid, gen, pairs, blocks, DEV)
        np.testing.assert_array_equal(got, K.raw_bits_numpy(seed, tid, gen, pairs, blocks))


def test_normals_equal_reference_to_rounding():
    for seed, tid, gen, rng in _keys(6, seed=1):
        pairs = rng.integers(0, 2 ** 32, int(rng.integers(1, 17)))
        start, numel = int(rng.integers(0, 50)), int(rng.integers(1, 5000))
        got = K.normal(seed, tid, gen, pairs, numel, start, device=DEV, backend="cupy").double().cpu().numpy()
        ref = K.normal_numpy(seed, tid, gen, pairs, numel, start, dtype=np.float64)
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)


def test_normals_vector_path_and_bf16():
    ref = K.normal_numpy(5, 6, 7, [0, 9, 2], 4096, 8, dtype=np.float64)
    got = K.normal(5, 6, 7, [0, 9, 2], 4096, 8, device=DEV, backend="cupy")  # aligned: float4 stores
    np.testing.assert_allclose(got.double().cpu().numpy(), ref, rtol=2e-6, atol=2e-6)
    bf = K.normal(5, 6, 7, [0, 9, 2], 4096, 8, device=DEV, dtype=torch.bfloat16, backend="cupy")
    assert bf.dtype == torch.bfloat16
    np.testing.assert_allclose(bf.float().cpu().numpy(), ref, rtol=2 ** -8, atol=1e-6)


def test_auto_dispatch_uses_the_kernel_on_cuda():
    a = K.normal(1, 2, 3, range(4), 100, device=DEV)
    b = K.normal(1, 2, 3, range(4), 100, device=DEV, backend="cupy")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.device.type == "cuda"


def test_lowrank_factors_one_launch():
    got = K.lowrank_factors(11, 12, 13, range(64), 33, 17, 2, device=DEV)
    ref = K.lowrank_factors(11, 12, 13, range(64), 33, 17, 2, backend="numpy", dtype=torch.float64)
    assert got[0].shape == (64, 33, 2) and got[1].shape == (64, 17, 2)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.double().cpu().numpy(), r.numpy(), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("start,numel", [(0, 1000), (3, 77)])
def test_int_noise_identical(start, numel):
    for seed, tid, gen, rng in _keys(3, seed=2):
        pairs = rng.integers(0, 2 ** 32, 9)
        got = K.int_noise(seed, tid, gen, pairs, numel, start, device=DEV).cpu().numpy()
        np.testing.assert_array_equal(got, K.int_noise_numpy(seed, tid, gen, pairs, numel, start))


@pytest.mark.parametrize("d", [1, 2, 3, 8, 17, 64])
def test_rotations_match_reference(d):
    particles = np.arange(0, 3000, 7)
    got = K.haar_rotations(3, 4, 5, particles, d, device=DEV).double().cpu().numpy()
    np.testing.assert_allclose(got, K.haar_rotations_numpy(3, 4, 5, particles, d), atol=3e-6 * d)


def test_vertex_offsets_kernel():
    rot = K.haar_rotations(3, 4, 5, range(50), 6, device=DEV)
    templ = torch.cat([torch.eye(6), -torch.eye(6)]).to(DEV)
    got = K.vertex_offsets(rot, templ, 0.7)
    ref = K.vertex_offsets(rot, templ, 0.7, backend="torch")
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("r", [1, 2, 4])
@pytest.mark.parametrize("rows", [1, 3, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_correction_matches_unfused(r, rows, dtype):
    members, m, n = 6, 37, 29
    g = torch.Generator(device="cpu").manual_seed(r * 10 + rows)
    x = torch.randn(members, rows, n, generator=g).to(DEV, dtype)
    base = torch.randn(members, rows, m, generator=g).to(DEV, dtype)
    pairs, signs = K.antithetic_pairs(range(members))
    scales = signs * 0.1 / np.sqrt(r)
    fused = K.lowrank_correction(base.clone(), x, 1, 2, 3, pairs, scales, r, fused=True)
    unfused = K.lowrank_correction(base.clone(), x, 1, 2, 3, pairs, scales, r, fused=False)
    ref = K.lowrank_correction(base.double().cpu(), x.double().cpu(), 1, 2, 3, pairs, scales, r, backend="numpy")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused.double().cpu(), ref, **tol)
    torch.testing.assert_close(unfused.double().cpu(), ref, **tol)


def test_dlpack_is_zero_copy():
    t = torch.arange(10, dtype=torch.float32, device=DEV)
    a = _cb().to_cupy(t)
    assert a.data.ptr == t.data_ptr()
    back = _cb().to_torch(a)
    assert back.data_ptr() == t.data_ptr()
    b16 = torch.zeros(4, dtype=torch.bfloat16, device=DEV)
    assert _cb().to_cupy(b16).data.ptr == b16.data_ptr()


def test_eggroll_population_on_cuda_equals_cpu():
    """The engine's path: EGGROLL's population layers on CUDA tensors (keyed normals and the fused correction
    from the kernels) give the CPU run's member losses, and a step moves the weights alike."""
    import copy

    from torch import nn

    from zoopt.eggroll import EGGROLL

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    x, y = torch.randn(5, 16), torch.randint(0, 8, (5,))
    loss = nn.CrossEntropyLoss()
    cpu = EGGROLL(copy.deepcopy(model), popsize=8, rank=2, sigma=0.1, seed=3)
    gpu = EGGROLL(copy.deepcopy(model).to(DEV), popsize=8, rank=2, sigma=0.1, seed=3)
    torch.testing.assert_close(gpu.evaluate((x.to(DEV), y.to(DEV)), loss).cpu(), cpu.evaluate((x, y), loss),
                               rtol=1e-4, atol=1e-4)
    cpu.step((x, y), loss)
    gpu.step((x.to(DEV), y.to(DEV)), loss)
    for a, b in zip(cpu.model.parameters(), gpu.model.parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4)
