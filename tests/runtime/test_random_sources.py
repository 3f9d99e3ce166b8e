"""The random sources (sdrun.random_sources) against what they name: torch's CPU generator run here, and the
web UI's CUDA emulation as numbers computed outside the project (philox_reference)."""

import numpy as np
import pytest
from philox_reference import A1111_DOCSTRING, CUDA_ISSUE_158398, NV_DRAWS

from sdrun.random_sources import RANDOM_SOURCES, PhiloxNormals, TorchCpuNormals, normal_source
from sdrun.settings import MAX_SEED

torch = pytest.importorskip("torch")

SHAPES = [(1,), (2,), (15,), (16,), (17,), (33,), (3, 5, 7), (4, 9, 11), (1, 4, 64, 64)]
SEEDS = [0, 1, 1234, MAX_SEED]
# torch's x86 kernel, which TorchCpuNormals follows; other CPUs run a scalar one with the C library's maths.
X86_KERNEL = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="torch computes CPU normals with its AVX2 kernel only on x86 CPUs that have AVX2",
)


@X86_KERNEL
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_source_draws_torch_cpu_randn_exactly(shape: tuple[int, ...], seed: int) -> None:
    """Three successive draws of one generator (the web UI's randn_without_seed), bit for bit: the scalar
    path below 16 elements, whole blocks of 16, and the redrawn last block of other sizes."""
    generator = torch.Generator().manual_seed(seed)
    ours = TorchCpuNormals(seed)
    for _ in range(3):
        expected = torch.randn(shape, generator=generator).numpy()
        drawn = ours.standard_normal(shape, dtype=np.float32)
        assert drawn.shape == expected.shape and drawn.dtype == np.float32
        np.testing.assert_array_equal(drawn, expected)


@X86_KERNEL
def test_cpu_source_keeps_the_cached_normal_across_calls_of_any_size() -> None:
    """torch keeps the second value of a scalar Box-Muller pair in the generator for the next scalar draw,
    even across a block draw in between."""
    shapes = [(3,), (16,), (1,), (5,), (4, 8, 8), (1,), (2,), (17,), (7,)]
    generator = torch.Generator().manual_seed(7)
    ours = TorchCpuNormals(7)
    for shape in shapes:
        expected = torch.randn(shape, generator=generator).numpy()
        np.testing.assert_array_equal(ours.standard_normal(shape), expected)


def test_cpu_source_power_a_neighbouring_seed_and_a_fresh_generator_differ() -> None:
    expected = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5)).numpy()
    assert not np.allclose(TorchCpuNormals(6).standard_normal((4, 8, 8)), expected, atol=1e-3)
    generator = torch.Generator().manual_seed(5)
    torch.randn((4, 8, 8), generator=generator)
    second = torch.randn((4, 8, 8), generator=generator).numpy()
    assert not np.allclose(TorchCpuNormals(5).standard_normal((4, 8, 8)), second, atol=1e-3)


@pytest.mark.parametrize("seed, draws", NV_DRAWS)
def test_gpu_and_nv_sources_draw_the_web_uis_nv_numbers(seed: int, draws: list) -> None:
    for name in ("gpu", "nv"):
        source = normal_source(name, seed)
        for shape, values in draws:
            drawn = source.standard_normal(shape, dtype=np.float32)
            assert drawn.shape == shape
            np.testing.assert_array_equal(drawn.ravel(), np.array(values, np.float32))


def test_nv_power_the_offset_advances_and_the_seed_counts() -> None:
    (shape, first), (_, second) = NV_DRAWS[0][1][:2]
    assert not np.allclose(PhiloxNormals(1).standard_normal(shape).ravel(), first, atol=1e-3)
    fresh_again = PhiloxNormals(0)
    fresh_again.standard_normal(shape)
    fresh_again.calls = 0  # a generator that does not advance between calls
    assert not np.allclose(fresh_again.standard_normal((5,)), second, atol=1e-3)


def test_philox_source_is_close_to_cuda_as_published() -> None:
    """The docstring of the web UI's emulation, and torch CUDA output printed in a pytorch issue."""
    np.testing.assert_allclose(PhiloxNormals(0).standard_normal((3, 4)), A1111_DOCSTRING, rtol=0, atol=4e-7)
    drawn = PhiloxNormals(42).standard_normal((1, 64, 2048))[0]
    np.testing.assert_allclose(drawn[:3, :3], CUDA_ISSUE_158398["first_columns"], rtol=0, atol=5e-5)
    np.testing.assert_allclose(drawn[:3, -3:], CUDA_ISSUE_158398["last_columns"], rtol=0, atol=5e-5)


def test_numpy_source_is_numpys_default_rng() -> None:
    source = normal_source("numpy", 11)
    expected = np.random.default_rng(11)
    for shape in [(1, 4, 8, 8), (3,)]:
        np.testing.assert_array_equal(
            source.standard_normal(shape, dtype=np.float32), expected.standard_normal(shape, dtype=np.float32)
        )


@pytest.mark.parametrize("name", RANDOM_SOURCES)
def test_every_source_draws_standard_normals(name: str) -> None:
    drawn = normal_source(name, 3).standard_normal((4, 64, 64), dtype=np.float32)
    assert drawn.dtype == np.float32 and abs(drawn.mean()) < 0.03 and abs(drawn.std() - 1) < 0.03
