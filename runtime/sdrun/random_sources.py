"""Random sources: generators of float32 standard normals, each seeded with an integer, that draw the numbers
of a named implementation (in numpy, without torch).

- "numpy": `numpy.random.default_rng(seed)`, sdrun's own contract (sdrun.draws) and its default.
- "gpu" and "nv": torch's CUDA `torch.randn` as the AUTOMATIC1111 web UI draws it (its default "GPU" source
  runs the CUDA generator; its "NV" source computes the same numbers on any device): Philox 4x32-10, one
  counter per element, then Box-Muller. Both names give the same numbers here.
- "cpu": torch's CPU `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` (the web UI's "CPU"
  source): mt19937, then Box-Muller as torch's x86 kernel computes it (see `TorchCpuNormals`).

Each source is something with `standard_normal(shape, dtype=np.float32)` (`NormalSource`, the call the
samplers make), and successive calls continue its stream as successive `torch.randn` calls on one generator
do (the web UI's `randn_without_seed`).
"""

import math
from typing import Protocol

import numpy as np

NUMPY = "numpy"
GPU = "gpu"
CPU = "cpu"
NV = "nv"
RANDOM_SOURCES = (NUMPY, GPU, CPU, NV)
DEFAULT_RANDOM_SOURCE = NUMPY


class NormalSource(Protocol):
    """What draws the noise: `numpy.random.Generator` is one, and so is each source here."""

    def standard_normal(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray: ...


def normal_source(name: str, seed: int) -> NormalSource:
    """A fresh generator of source `name` (one of RANDOM_SOURCES) seeded with `seed` (>= 0)."""
    if name == NUMPY:
        return np.random.default_rng(seed)
    if name in (GPU, NV):
        return PhiloxNormals(seed)
    if name == CPU:
        return TorchCpuNormals(seed)
    raise ValueError(f"unknown random source {name!r}: the sources are {', '.join(RANDOM_SOURCES)}")


def _float32_only(dtype: type) -> None:
    if np.dtype(dtype) != np.float32:
        raise TypeError(f"this source draws float32 normals, not {np.dtype(dtype)}")


# Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): two multipliers,
# and the two Weyl increments added to the key between rounds.
_PHILOX_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_PHILOX_ROUNDS = 10
# curand's Box-Muller constants, as float32: 2^-32 and 2^-32 * 2pi; half of each centres the uniforms.
_TWO_POW_MINUS_32 = np.float32(2.3283064e-10)
_TWO_POW_MINUS_32_2PI = np.float32(2.3283064e-10 * 6.2831855)


def philox_4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """The 4 x n uint32 outputs of Philox 4x32-10 for a 4 x n uint32 `counter` and the (low, high) words
    of the key."""
    c0, c1, c2, c3 = (word.astype(np.uint32) for word in counter)
    k0, k1 = key
    low32 = np.uint64(0xFFFFFFFF)
    for round_ in range(_PHILOX_ROUNDS):
        if round_:
            k0, k1 = (k0 + _PHILOX_WEYL[0]) & 0xFFFFFFFF, (k1 + _PHILOX_WEYL[1]) & 0xFFFFFFFF
        product0 = c0.astype(np.uint64) * _PHILOX_MULTIPLIERS[0]
        product1 = c2.astype(np.uint64) * _PHILOX_MULTIPLIERS[1]
        hi0, lo0 = (product0 >> np.uint64(32)).astype(np.uint32), (product0 & low32).astype(np.uint32)
        hi1, lo1 = (product1 >> np.uint64(32)).astype(np.uint32), (product1 & low32).astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
    return np.stack([c0, c1, c2, c3])


class PhiloxNormals:
    """torch's CUDA `torch.randn` for a generator seeded with `seed`: element i of the n-th call (from 0)
    comes from the Philox block of counter (n, 0, i, 0) and key `seed`, its first two words turned into one
    normal by curand's Box-Muller (the sine of the pair). This is the web UI's account of the CUDA
    generator (its "NV" source), which holds while a call draws no more values than the GPU's kernel runs
    threads (its multiprocessors times their threads: some 70,000 on small GPUs, so an SD 1.x latent of
    4x64x64 and an SDXL one of 4x128x128 fit; beyond, CUDA's numbers depend on the GPU). CUDA computes the
    Box-Muller in single precision and this in double, so the two also differ by a few float32 steps."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.calls = 0

    def standard_normal(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        _float32_only(dtype)
        count = math.prod(shape)
        counter = np.zeros((4, count), np.uint32)
        counter[0] = self.calls
        counter[2] = np.arange(count, dtype=np.uint32)
        self.calls += 1
        words = philox_4x32(counter, (self.seed & 0xFFFFFFFF, (self.seed >> 32) & 0xFFFFFFFF))
        # In float64 from the float32 constants, rounded once at the end (the web UI's reference numbers).
        u = words[0] * np.float64(_TWO_POW_MINUS_32) + np.float64(_TWO_POW_MINUS_32 / 2)
        v = words[1] * np.float64(_TWO_POW_MINUS_32_2PI) + np.float64(_TWO_POW_MINUS_32_2PI / 2)
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


_MT_STATE_WORDS = 624


def mt19937_key(seed: int) -> np.ndarray:
    """The mt19937 state of `seed` as torch (and the reference init_genrand) seeds it, from its low 32
    bits."""
    state = [seed & 0xFFFFFFFF]
    for index in range(1, _MT_STATE_WORDS):
        previous = state[-1]
        state.append((1812433253 * (previous ^ (previous >> 30)) + index) & 0xFFFFFFFF)
    return np.array(state, dtype=np.uint32)


class TorchCpuNormals:
    """torch's CPU `torch.randn` on a `torch.Generator().manual_seed(seed)`, float32, call after call.

    A call of 16 or more elements draws one float uniform (24 bits of an mt19937 word) per element, turns
    each block of 16 into normals by Box-Muller (the first 8 uniforms give the radii, the last 8 the angles;
    cosines fill the first half, sines the second), and when the count is not a multiple of 16 draws 16
    more uniforms and recomputes the last 16 elements from them. Fewer than 16 elements are drawn one by
    one in double precision (two 53-bit uniforms a pair, the sine kept for the next element, also across
    calls, as torch's generator keeps it).

    The block transform is torch's x86 kernel (AVX2, which AVX-512 CPUs run too): single-precision
    Cephes log, sin and cos (Julien Pommier's avx_mathfun) with the multiply-adds its compiler fuses.
    torch on CPUs without AVX2 (ARM ones, Apple's among them) computes the block with the C library's
    logf, cosf and sinf instead: there about a third of the values differ from these in the last bits
    (by 2e-6 at most), as the web UI's CPU source itself differs between such machines.
    """

    def __init__(self, seed: int) -> None:
        self._bits = np.random.MT19937(0)
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": mt19937_key(seed), "pos": 624}}
        self._next_normal: float | None = None

    def _words(self, count: int) -> np.ndarray:
        return self._bits.random_raw(count).astype(np.uint32)

    def _uniforms(self, count: int) -> np.ndarray:
        return (self._words(count) & np.uint32(0xFFFFFF)).astype(np.float32) * np.float32(2.0**-24)

    def standard_normal(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        _float32_only(dtype)
        count = math.prod(shape)
        if count < 16:
            return np.array([self._scalar_normal() for _ in range(count)], np.float32).reshape(shape)
        values = self._uniforms(count)
        whole = count - count % 16
        out = np.empty(count, np.float32)
        out[:whole] = _box_muller_blocks(values[:whole])
        if whole < count:
            out[count - 16 :] = _box_muller_blocks(self._uniforms(16))
        return out.reshape(shape)

    def _scalar_normal(self) -> float:
        if self._next_normal is not None:
            value, self._next_normal = self._next_normal, None
            return value
        first, second = (self._uniform53() for _ in range(2))
        radius = math.sqrt(-2.0 * math.log1p(-second))
        theta = 2.0 * math.pi * first
        self._next_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def _uniform53(self) -> float:
        high, low = (int(word) for word in self._words(2))
        return (((high << 32) | low) & ((1 << 53) - 1)) * 2.0**-53


def _fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """float32 a * b + c rounded once (the product is exact in float64; the sum rounds twice only in
    cases far rarer than one in a billion)."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


_F = np.float32
_LOG_POLYNOMIAL = tuple(
    _F(c)
    for c in (
        7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
        -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
    )
)  # fmt: skip


def _cephes_log(x: np.ndarray) -> np.ndarray:
    """Single-precision natural log of positive normal floats, step for step as avx_mathfun's log256_ps:
    x = m 2^e with m in [sqrt(1/2), sqrt(2)), then a degree-9 polynomial in m - 1."""
    bits = x.view(np.int32)
    exponent = ((bits >> 23) - 0x7F).astype(np.float32) + _F(1)
    mantissa = ((bits & ~0x7F800000) | _F(0.5).view(np.int32)).view(np.float32)  # in [0.5, 1)
    small = mantissa < _F(0.707106781186547524)
    exponent = exponent - np.where(small, _F(1), _F(0))
    m = (mantissa - _F(1)) + np.where(small, mantissa, _F(0))
    z = m * m
    y = np.full_like(m, _LOG_POLYNOMIAL[0])
    for coefficient in _LOG_POLYNOMIAL[1:]:
        y = _fma(y, m, coefficient)
    y = _fma(y * m, z, exponent * _F(-2.12194440e-4))
    y = _fma(-z, _F(0.5), y)
    return _fma(exponent, _F(0.693359375), m + y)


def _cephes_sincos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-precision (sin x, cos x) for x >= 0, as avx_mathfun's sincos256_ps: reduce by the octant of
    x (pi/4 split in three parts), then Cephes' sine and cosine polynomials, swapped and signed per
    octant."""
    octant = (x * _F(1.27323954473516)).astype(np.int32)
    octant = (octant + 1) & ~1
    y = octant.astype(np.float32)
    r = _fma(y, _F(-0.78515625), x)
    r = _fma(y, _F(-2.4187564849853515625e-4), r)
    r = _fma(y, _F(-3.77489497744594108e-8), r)
    z = r * r
    cosine = _fma(_fma(_F(2.443315711809948e-5), z, _F(-1.388731625493765e-3)), z, _F(4.166664568298827e-2))
    cosine = _fma(cosine * z, z, -(z * _F(0.5))) + _F(1)
    sine = _fma(_fma(_F(-1.9515295891e-4), z, _F(8.3321608736e-3)), z, _F(-1.6666654611e-1))
    sine = _fma(sine * z, r, r)
    sine_polynomial = (octant & 2) == 0
    sin_x = np.where(sine_polynomial, sine, cosine)
    cos_x = np.where(sine_polynomial, cosine, sine)
    sin_x = np.where((octant & 4) != 0, -sin_x, sin_x)
    cos_x = np.where((~(octant - 2) & 4) != 0, -cos_x, cos_x)
    return sin_x, cos_x


def _box_muller_blocks(uniforms: np.ndarray) -> np.ndarray:
    """torch's normal_fill_16 over consecutive blocks of 16 float32 uniforms in [0, 1)."""
    blocks = uniforms.reshape(-1, 16)
    radius = np.sqrt(_F(-2) * _cephes_log(_F(1) - blocks[:, :8]))
    sine, cosine = _cephes_sincos(_F(2 * math.pi) * blocks[:, 8:])
    return np.concatenate([radius * cosine, radius * sine], axis=1).reshape(-1)
