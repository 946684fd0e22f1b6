import numpy as np
import pytest
import torch

from zoopt.kernels import normal, normal_numpy, normal_torch, philox_numpy, philox_torch, raw_bits_numpy

N = 1_000_000


def test_philox_known_answers():
    # Random123's published test vectors for philox4x32-10
    assert [int(x) for x in philox_numpy(0, 0, 0, 0, 0, 0)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = 0xFFFFFFFF
    assert [int(x) for x in philox_numpy(ones, ones, ones, ones, ones, ones)] == [
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    pi = [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]
    assert [int(x) for x in philox_numpy(*pi, 0xA4093822, 0x299F31D0)] == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_torch_philox_matches_numpy_bits():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2**32, size=(4, 5000), dtype=np.uint64)
    k0, k1 = 0x12345678, 0xFEDCBA98
    ref = philox_numpy(*c, k0, k1)
    got = philox_torch(*(torch.as_tensor(x.astype(np.int64)) for x in c), k0, k1)
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r.astype(np.int64), g.numpy())


def test_torch_normals_equal_reference_to_rounding():
    a = normal_numpy(2**40 + 7, 3, 11, [0, 5, 9], 1001, start=3)
    b = normal_torch(2**40 + 7, 3, 11, [0, 5, 9], 1001, start=3)
    np.testing.assert_allclose(a, b.numpy(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", [normal_numpy, normal_torch])
def test_any_slice_regenerates_the_whole(impl):
    whole = np.asarray(impl(42, 1, 7, range(16), 257))
    for pairs, start, numel in [([3], 0, 257), ([15, 2, 7], 5, 100), ([0], 253, 4), ([9, 10], 1, 1)]:
        part = np.asarray(impl(42, 1, 7, pairs, numel, start=start))
        np.testing.assert_array_equal(part, whole[pairs][:, start:start + numel])


def test_moments():
    z = normal(0, 0, 0, range(8), N // 8).reshape(-1).double()
    assert abs(float(z.mean())) < 0.005
    assert abs(float(z.var()) - 1) < 0.01
    # tails of a standard normal: P(|z| > 2) = 0.0455, P(|z| > 3) = 0.0027
    assert abs(float((z.abs() > 2).double().mean()) - 0.0455) < 0.002
    assert abs(float((z.abs() > 3).double().mean()) - 0.0027) < 0.0005


@pytest.mark.parametrize("other", [
    dict(tensor_id=1, generation=0, pair=0),   # another tensor
    dict(tensor_id=0, generation=1, pair=0),   # another generation
    dict(tensor_id=0, generation=0, pair=1),   # another pair
])
def test_independent_streams(other):
    base = normal(5, 0, 0, [0], N)[0].double()
    z = normal(5, other["tensor_id"], other["generation"], [other["pair"]], N)[0].double()
    corr = float(torch.corrcoef(torch.stack([base, z]))[0, 1])
    assert abs(corr) < 0.01
    assert not torch.equal(base, z)


def test_same_shaped_tensors_do_not_share_noise():
    a = normal(9, 0, 3, range(4), 4096)
    b = normal(9, 1, 3, range(4), 4096)
    assert float((a == b).float().mean()) < 1e-3
    corr = float(torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]).double())[0, 1])
    assert abs(corr) < 0.03


def test_raw_bits_layout_matches_normals():
    bits = raw_bits_numpy(1, 2, 3, [4], [0, 1])
    assert bits.shape == (1, 2, 4) and bits.dtype == np.uint32
    u = ((bits[0, 0] >> 8).astype(np.float64) + 0.5) / 2**24
    z0 = np.sqrt(-2 * np.log(u[0])) * np.cos(2 * np.pi * u[1])
    assert abs(normal_numpy(1, 2, 3, [4], 1)[0, 0] - z0) < 1e-6


def test_bad_keys():
    with pytest.raises(ValueError, match="generation"):
        normal(0, 0, -1, [0], 4)
    with pytest.raises(ValueError, match="tensor_id"):
        normal(0, 2**32, 0, [0], 4)
    with pytest.raises(TypeError, match="seed"):
        normal(1.5, 0, 0, [0], 4)
    with pytest.raises(ValueError, match="pairs"):
        normal(0, 0, 0, [-1], 4)
    with pytest.raises(ValueError, match="backend"):
        normal(0, 0, 0, [0], 4, backend="fortran")
