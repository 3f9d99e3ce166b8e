"""The web UI's seed features in sdrun.draws (variation seed, seed resize, ENSD) against a torch reference
of its `ImageRNG` (modules/rng.py) under its CPU source, drawn with real torch generators."""

import numpy as np
import pytest

from sdrun.draws import SeedFeatures, a1111_slerp, draw_image, image_noise
from sdrun.random_sources import normal_source

torch = pytest.importorskip("torch")

LATENT = (1, 4, 8, 10)  # a 80x64 picture
LATER_DRAWS = 3


def torch_slerp(strength: float, low, high):
    """The web UI's slerp, per channel and column over the height, with its near-parallel fallback."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(1)
    if cosine.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(cosine)
    weights = [torch.sin(t * omega) / torch.sin(omega) for t in (1.0 - strength, strength)]
    return weights[0].unsqueeze(1) * low + weights[1].unsqueeze(1) * high


def reference_draws(
    seed: int,
    subseed: int | None = None,
    strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
    ensd: int = 0,
    reseed: bool = True,
    slerp=torch_slerp,
    shape: tuple[int, int, int] = LATENT[1:],
) -> list[np.ndarray]:
    """ImageRNG.first() then LATER_DRAWS next()s for one image of latent `shape`, as the web UI runs them
    with randn_source "CPU": randn(seed, shape) seeds torch's global generator, `generator` is the image's
    own."""
    generator = torch.Generator().manual_seed(seed)

    def randn(of_seed: int, of_shape: tuple[int, ...], with_generator=None):
        torch.manual_seed(of_seed)
        return torch.randn(of_shape, generator=with_generator)

    drawn_shape = shape
    if resize_from is not None:
        drawn_shape = (shape[0], resize_from[1] // 8, resize_from[0] // 8)
    subnoise = randn(subseed, drawn_shape) if subseed is not None and strength != 0 else None
    if drawn_shape != shape:
        noise = randn(seed, drawn_shape)
    else:
        noise = randn(seed, shape, generator)
    if subnoise is not None:
        noise = slerp(strength, noise, subnoise)
    if drawn_shape != shape:
        full = randn(seed, shape, generator)
        dx, dy = (shape[2] - drawn_shape[2]) // 2, (shape[1] - drawn_shape[1]) // 2
        w = drawn_shape[2] if dx >= 0 else drawn_shape[2] + 2 * dx
        h = drawn_shape[1] if dy >= 0 else drawn_shape[1] + 2 * dy
        full[:, max(dy, 0) : max(dy, 0) + h, max(dx, 0) : max(dx, 0) + w] = noise[
            :, max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w
        ]
        noise = full
    if ensd and reseed:
        generator = torch.Generator().manual_seed(seed + ensd)
    later = [torch.randn(shape, generator=generator) for _ in range(LATER_DRAWS)]
    return [draw.numpy() for draw in [noise, *later]]


def our_draws(seed: int, features: SeedFeatures, subseed: int | None = None) -> list[np.ndarray]:
    draws = draw_image(seed, LATENT, 1.0, None, None, inpainting=False, features=features, subseed=subseed)
    later = [draws.rng.standard_normal(LATENT, dtype=np.float32) for _ in range(LATER_DRAWS)]
    return [draw.reshape(LATENT[1:]) for draw in [draws.noise, *later]]


def assert_draws_equal(ours: list[np.ndarray], expected: list[np.ndarray], atol: float = 0.0) -> None:
    for index, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=atol, err_msg=f"draw {index}")


def assert_draws_differ(ours: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert any(not np.allclose(mine, theirs, atol=1e-3) for mine, theirs in zip(ours, expected, strict=True))


CASES = {
    "plain": dict(),
    "ensd": dict(ensd=31337),
    "variation": dict(subseed=77, strength=0.3),
    "full variation": dict(subseed=77, strength=1.0),
    "resize smaller": dict(resize_from=(48, 40)),
    "resize larger and odd": dict(resize_from=(104, 88)),
    "resize one side each way": dict(resize_from=(48, 96)),
    "everything": dict(subseed=5, strength=0.6, resize_from=(56, 48), ensd=1),
}


@pytest.mark.parametrize("case", CASES)
def test_cpu_source_draws_what_the_web_ui_draws(case: str) -> None:
    given = CASES[case]
    features = SeedFeatures(
        random_source="cpu",
        eta_noise_seed_delta=given.get("ensd", 0),
        subseed=given.get("subseed"),
        subseed_strength=given.get("strength", 0.0),
        seed_resize_from=given.get("resize_from"),
    )
    expected = reference_draws(1234, **given)
    ours = our_draws(1234, features, given.get("subseed"))
    # The slerp's float32 maths (norms, acos) may differ from torch's in the last bits; the draws do not.
    assert_draws_equal(ours, expected, atol=2e-6 if given.get("strength") else 0.0)


def test_power_an_off_by_one_seed_differs() -> None:
    assert_draws_differ(our_draws(1235, SeedFeatures("cpu")), reference_draws(1234))


def test_power_ensd_reseeds_the_later_draws() -> None:
    ours = our_draws(1234, SeedFeatures("cpu", eta_noise_seed_delta=31337))
    np.testing.assert_array_equal(ours[0], reference_draws(1234, ensd=31337, reseed=False)[0])
    assert_draws_differ(ours[1:], reference_draws(1234, ensd=31337, reseed=False)[1:])


def test_power_slerp_is_not_lerp() -> None:
    def lerp(strength: float, low, high):
        return low * (1 - strength) + high * strength

    ours = our_draws(1234, SeedFeatures("cpu", subseed=77, subseed_strength=0.3), subseed=77)
    assert_draws_differ(ours[:1], reference_draws(1234, 77, 0.3, slerp=lerp)[:1])


def test_nearly_parallel_noises_take_the_web_uis_reversed_lerp() -> None:
    """Mean cosine above 0.9995: low * s + high * (1 - s), the web UI's weights, not the slerp's."""
    low = np.random.default_rng(0).standard_normal(LATENT[1:], dtype=np.float32)
    high = low + np.float32(0.01) * np.random.default_rng(1).standard_normal(LATENT[1:], dtype=np.float32)
    expected = torch_slerp(0.2, torch.from_numpy(low), torch.from_numpy(high)).numpy()
    np.testing.assert_allclose(a1111_slerp(0.2, low, high), expected, rtol=0, atol=1e-6)
    assert not np.allclose(expected, low * 0.8 + high * 0.2, atol=1e-4), "power: the usual weights differ"


def test_variation_keeps_the_seed_and_numbers_the_subseeds() -> None:
    """processing.py: all_seeds stay the seed under a variation strength, all_subseeds count up."""
    assert SeedFeatures(subseed=10, subseed_strength=0.5).image_seeds(3, 2) == (3, 12)
    assert SeedFeatures(subseed=10).image_seeds(3, 2) == (5, 12)


@pytest.mark.parametrize("source", ["gpu", "nv", "cpu"])
def test_the_web_uis_sources_draw_the_vae_noise_apart_from_the_images_generator(source: str) -> None:
    """The starting noise is the image generator's first draw even with an init image (the VAE sample's
    noise comes from numpy's generator of the seed, as the docstring of sdrun.draws says)."""

    class Spread:
        def sample(self, noise: np.ndarray) -> np.ndarray:
            return noise

    features = SeedFeatures(source)
    draws = draw_image(9, LATENT, 1.0, Spread(), Spread(), inpainting=True, features=features)
    np.testing.assert_array_equal(draws.noise, normal_source(source, 9).standard_normal(LATENT))
    vae = np.random.default_rng(9)
    np.testing.assert_array_equal(draws.init_latents, vae.standard_normal(LATENT, dtype=np.float32))
    np.testing.assert_array_equal(draws.masked_latents, vae.standard_normal(LATENT, dtype=np.float32))


def test_image_noise_is_a_fresh_passs_draws() -> None:
    """What a second pass (the hires fix) calls: the same draws as the reference, without a VAE draw."""
    features = SeedFeatures("cpu", eta_noise_seed_delta=3, subseed=77, subseed_strength=0.3)
    noise, rng = image_noise(1234, 77, LATENT, features)
    later = [rng.standard_normal(LATENT, dtype=np.float32) for _ in range(LATER_DRAWS)]
    expected = reference_draws(1234, 77, 0.3, ensd=3)
    assert_draws_equal([draw.reshape(LATENT[1:]) for draw in [noise, *later]], expected, atol=2e-6)
