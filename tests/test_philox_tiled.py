"""The compiled, tiled CPU path of zoopt.kernels.normal equals the plain torch arithmetic bit for bit."""
import math

import pytest
import torch

from zoopt.kernels import normal, noise, philox_c
from zoopt.kernels.noise import MASK32, TWO_PI, _uniforms_torch

pytestmark = pytest.mark.skipif(not philox_c.available(), reason="no C compiler for the compiled Philox path")


def untiled_torch(seed, tensor_id, generation, pairs, numel, start=0):
    """The torch formula on the torch Philox words: one pass per operation over the whole grid."""
    pair_arr = noise._pairs_array(pairs)
    first, last, offset = noise._block_range(start, numel)
    u0, u1, u2, u3 = _uniforms_torch(seed, tensor_id, generation, pair_arr, first, last, torch.device("cpu"))
    r01 = torch.sqrt(-2.0 * torch.log(u0))
    r23 = torch.sqrt(-2.0 * torch.log(u2))
    z = torch.stack([r01 * torch.cos(TWO_PI * u1), r01 * torch.sin(TWO_PI * u1),
                     r23 * torch.cos(TWO_PI * u3), r23 * torch.sin(TWO_PI * u3)], dim=-1)
    return z.reshape(len(pair_arr), -1)[:, offset:offset + numel]


CASES = [(0, 5, 0, list(range(64)), 2048, 0), (2**40 + 7, 3, 11, [0, 5, 9], 1001, 3),
         (7, 1, 2, [4], 70001, 5), (9, 9, 9, [2**32 - 1, 0], 17, 1), (11, 12, 0, list(range(300)), 3, 2),
         (2**63 - 1, 2**32 - 1, 2**32 - 1, [123456789], 4099, 4093)]


@pytest.mark.parametrize("tile", [7, 1000, 1 << 15])
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_compiled_path_is_bit_identical(tile, threads, monkeypatch):
    monkeypatch.setattr(noise, "TILE_BLOCKS", tile)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in CASES:
            got = normal(*case)
            assert got.shape == (len(case[3]), case[4]) and got.dtype == torch.float32
            assert torch.equal(got, untiled_torch(*case)), case
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("level", [2, 1, 0])
def test_planes_words_order_and_scaled_products_on_every_simd_path(level):
    if philox_c.simd_level(level) != level:
        philox_c.simd_level(2)
        pytest.skip(f"this CPU has no SIMD level {level}")
    try:
        for first, nblocks in [(5, 37), (2**31 - 100, 203), (2**32 - 300, 300), (0, 64), (3, 7)]:  # SIMD body + tail
            pairs = torch.tensor([3, 0, 7, 2**32 - 1])
            seed = 2**35 + 11
            ref = _uniforms_torch(seed, 4, 9, pairs.numpy(), first, first + nblocks, torch.device("cpu"))
            ref = [r.view(4, -1) for r in ref]
            out = torch.empty(4, 4, nblocks)
            philox_c.philox_planes(out, pairs, first, 4, 9, seed & MASK32, seed >> 32, order=(0, 2, 1, 3),
                                   mult=(1.0, 1.0, TWO_PI, TWO_PI))
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[2])
            assert torch.equal(out[2], TWO_PI * ref[1]) and torch.equal(out[3], TWO_PI * ref[3])
            plain = philox_c.philox_planes(torch.empty(4, len(pairs), nblocks), pairs, first, 4, 9,
                                           seed & MASK32, seed >> 32)   # identity order, unit multipliers
            assert torch.equal(plain, torch.stack(ref))
        case = CASES[0]
        assert torch.equal(normal(*case), untiled_torch(*case))
    finally:
        philox_c.simd_level(2)
    with pytest.raises(ValueError, match="pair rows"):
        philox_c.philox_planes(torch.empty(4, 2, 5), pairs, 0, 0, 0, 0, 0)


def test_tiles_cover_the_grid_once():
    for npairs, nblocks, tile in [(5, 3, 4), (3, 10, 4), (1, 1, 1), (64, 512, 1 << 15), (2, 100000, 1 << 15)]:
        seen = torch.zeros(npairs, nblocks, dtype=torch.int64)
        for p0, p1, b0, b1 in noise._tiles(npairs, nblocks, tile):
            assert (p1 - p0) * (b1 - b0) <= max(tile, nblocks)
            seen[p0:p1, b0:b1] += 1
        assert bool((seen == 1).all())
    assert math.isfinite(float(normal(1, 2, 3, [0], 5).abs().max()))
