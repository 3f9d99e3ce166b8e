"""Train the embedded tiny-shapes model: `python -m sdexport.tiny.train --out sdexport/embedded`.

Latent diffusion in the order of the original (Rombach et al. 2022): the KL autoencoder first, the latent
scaling factor measured as 1 / std of its latents, then the text encoder and UNet together on the DDPM
noise-prediction loss (Ho et al. 2020, eq. 14) over the SD 1.x schedule, with the caption dropped 10% of the
time so that classifier-free guidance (Ho & Salimans 2022) has an unconditional model to push away from.
Everything is seeded; losses are logged as it goes and saved beside the weights.

`--resume DIR` continues the text encoder and UNet of the model saved in DIR (its autoencoder kept) for
`--diffusion-steps` more steps. `--shape-loss-weight W` weights the noise-prediction loss by 1 + W on the
latent pixels under the shape: a small shape covers a few of the 8x8 latent pixels, and an unweighted loss
learns its corners last.
"""

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdexport.checkpoints import load_model, save_original, write_config_yaml
from sdexport.embedded import CHECKPOINT_FILE, CONFIG_FILE, TRAINING_FACTS_FILE
from sdexport.export.tokenizer_files import write_tokenizer
from sdexport.models.clip import CLIPTextConfig
from sdexport.models.stable_diffusion import StableDiffusion, StableDiffusionConfig
from sdexport.models.unet import UNetConfig
from sdexport.models.vae import VAEConfig
from sdexport.tiny.shapes import IMAGE_SIZE, all_scenes, draw, judge
from sdrun.tokenizer import CLIPTokenizer

CAPTION_DROPOUT = 0.1
# Exponential moving average of the text encoder and UNet weights, what gets saved (Ho et al. 2020, app. B).
EMA_DECAY = 0.999
FOREGROUND_WEIGHT = 4.0
# Initial posterior log-variance: the autoencoder starts nearly deterministic (std e^-3), so its
# decoder learns from clean latents; the KL term is free to widen it later.
INITIAL_LOGVAR = -6.0


@dataclasses.dataclass
class TrainSettings:
    seed: int = 0
    images_per_caption: int = 48
    vae_steps: int = 3500
    vae_batch: int = 8
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    diffusion_steps: int = 9000
    diffusion_batch: int = 48
    diffusion_lr: float = 2e-3
    eval_seeds: int = 1
    threads: int = 2
    device: str = "cpu"
    resume: str = ""
    shape_loss_weight: float = 0.0


def tiny_shapes_config() -> StableDiffusionConfig:
    """SD 1.x in miniature: 64x64 pictures, 8x8x4 latents, a 2-layer CLIP text encoder, CLIP's vocabulary."""
    hidden = 64
    return StableDiffusionConfig(
        unet=UNetConfig(
            model_channels=64,
            channel_mult=(1, 2),
            attention_resolutions=(1, 2),
            num_res_blocks=1,
            num_heads=4,
            context_dim=hidden,
            norm_groups=16,
        ),
        # Two groups: each group norm of a flat-coloured picture keeps only the pattern across a group's
        # channels, so groups of 2 channels (8 groups of 16) could not tell six background colours apart.
        vae=VAEConfig(ch=16, ch_mult=(1, 2, 2, 4), num_res_blocks=1, norm_groups=2, scaling_factor=1.0),
        text_encoder=CLIPTextConfig(
            hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=2, num_attention_heads=4
        ),
        sample_size=IMAGE_SIZE // 8,
        # SD's guidance of 7.5 over-saturates a model this small (euler_a at 7.5 drew 20% of the prompt
        # set right, at 4.0 98%; dpmpp_2m_karras 93% and 95%): the folder carries the settings it is meant
        # for.
        generation_defaults={"sampler": "dpmpp_2m_karras", "steps": 20, "guidance_scale": 4.0},
    )


def alphas_cumprod(config: StableDiffusionConfig) -> Tensor:
    """The SD 1.x "scaled_linear" schedule: betas linear in sqrt, then alpha-bar_t = prod(1 - beta)."""
    betas = torch.linspace(
        config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps, dtype=torch.float64
    ) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def to_model_range(images: np.ndarray) -> Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_pixels(images: Tensor) -> np.ndarray:
    """float [N, 3, H, W] in about [-1, 1] -> uint8 [N, H, W, 3]."""
    pixels = ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def draw_dataset(images_per_caption: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each caption drawn `images_per_caption` times: uint8 images [N, 64, 64, 3] and scene indices [N]."""
    scenes = all_scenes()
    index = np.repeat(np.arange(len(scenes)), images_per_caption)
    return np.stack([draw(scenes[i], rng) for i in index]), index


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def foreground_weight(x: Tensor, weight: float = FOREGROUND_WEIGHT) -> Tensor:
    """[B, 1, H, W]: 1 on the background (the border's median colour), 1 + weight on the shape.

    The shape covers 5-25% of a picture; unweighted, the autoencoder learns the background long before
    it learns the shape's colour and outline, which are what the captions are about.
    """
    border = torch.cat([x[..., :2, :].flatten(2), x[..., -2:, :].flatten(2),
                        x[..., :, :2].flatten(2), x[..., :, -2:].flatten(2)], dim=2)
    background = border.median(dim=2).values[..., None, None]
    shape = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).to(x.dtype)
    return 1.0 + weight * shape


def train_vae(model: StableDiffusion, images: np.ndarray, settings: TrainSettings, generator: torch.Generator,
              log: Callable[[str], None]) -> list[float]:
    """Shape-weighted L1 + L2 reconstruction plus a small KL to N(0, I) (Kingma & Welling 2014, eq. 10)."""
    vae, device = model.vae, settings.device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    embed = model.config.vae.embed_dim
    losses = []
    for step in range(settings.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.vae_steps, settings.vae_lr, warmup=20)
        pick = torch.randint(len(images), (settings.vae_batch,), generator=generator)
        x = to_model_range(images[pick.numpy()]).to(device)
        mean, logvar = vae.encode(x).split(embed, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.randn(mean.shape, generator=generator).to(device) * (0.5 * logvar).exp()
        recon = vae.decode(z)
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
        error = (recon - x).abs()
        loss = (foreground_weight(x) * (error + error**2)).mean() + settings.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == settings.vae_steps - 1:
            log(f"vae step {step:5d}  loss {np.mean(losses[-25:]):.4f}  kl {kl.item():.2f}")
    return losses


@torch.no_grad()
def encode_posteriors(model: StableDiffusion, images: np.ndarray, batch: int = 128) -> tuple[Tensor, Tensor]:
    """Posterior mean and standard deviation of every image."""
    embed = model.config.vae.embed_dim
    device = next(model.vae.parameters()).device
    means, stds = [], []
    for start in range(0, len(images), batch):
        moments = model.vae.encode(to_model_range(images[start : start + batch]).to(device)).cpu()
        mean, logvar = moments.split(embed, dim=1)
        means.append(mean)
        stds.append((0.5 * logvar.clamp(-30.0, 20.0)).exp())
    return torch.cat(means), torch.cat(stds)


def measure_scaling_factor(mean: Tensor, std: Tensor, generator: torch.Generator) -> float:
    """1 / std of posterior samples, as the original measured 0.18215 on its first training batch."""
    samples = mean + std * torch.randn(mean.shape, generator=generator)
    return float(1.0 / samples.std())


def shipped_tokenizer() -> CLIPTokenizer:
    """The tokenizer every exported folder gets, read as the runtime reads it."""
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder))
        return CLIPTokenizer.from_folder(Path(folder))


def caption_ids(tokenizer: CLIPTokenizer) -> tuple[Tensor, Tensor]:
    """Token ids of the 180 captions [180, 77] and of the empty prompt [1, 77]."""
    captions = [scene.caption for scene in all_scenes()]
    return torch.from_numpy(tokenizer.encode(captions)), torch.from_numpy(tokenizer.encode([""]))


def latent_shape_masks(images: np.ndarray, batch: int = 512) -> Tensor:
    """[N, 1, 8, 8]: the share of each latent pixel's 8x8 picture pixels that the shape covers."""
    masks = []
    for start in range(0, len(images), batch):
        x = to_model_range(images[start : start + batch])
        masks.append(F.avg_pool2d(foreground_weight(x, 1.0) - 1.0, 8))
    return torch.cat(masks)


def train_diffusion(model: StableDiffusion, mean: Tensor, std: Tensor, scene_index: np.ndarray,
                    ids: tuple[Tensor, Tensor], settings: TrainSettings, generator: torch.Generator,
                    log: Callable[[str], None],
                    every: Callable[[int], None] | None = None,
                    shape_masks: Tensor | None = None) -> list[float]:
    """Text encoder and UNet together on || eps - eps_theta(sqrt(a_t) z + sqrt(1 - a_t) eps, t, c) ||^2,
    weighted by 1 + settings.shape_loss_weight on the shape's latent pixels when `shape_masks` are given."""
    config, device = model.config, settings.device
    scale = config.vae.scaling_factor
    alpha_bar = alphas_cumprod(config)
    caption_tokens, empty_tokens = ids
    parameters = [*model.unet.parameters(), *model.text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.diffusion_lr, weight_decay=0.01)
    averaged = [p.detach().clone() for p in parameters]
    scenes = torch.from_numpy(scene_index)
    losses = []
    for step in range(settings.diffusion_steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.diffusion_steps, settings.diffusion_lr, warmup=100)
        pick = torch.randint(len(mean), (settings.diffusion_batch,), generator=generator)
        latents = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=generator)) * scale
        tokens = caption_tokens[scenes[pick]].clone()
        dropped = torch.rand(len(pick), generator=generator) < CAPTION_DROPOUT
        tokens[dropped] = empty_tokens
        t = torch.randint(config.num_train_timesteps, (len(pick),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        a = alpha_bar[t][:, None, None, None]
        noisy = (a.sqrt() * latents + (1.0 - a).sqrt() * noise).to(device)
        context = model.text_encoder(tokens.to(device))[0]
        error = (model.unet(noisy, t.to(device), context) - noise.to(device)) ** 2
        if shape_masks is not None:
            error = error * (1.0 + settings.shape_loss_weight * shape_masks[pick].to(device))
        loss = error.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        with torch.no_grad():
            # The warm-up form of the decay lets the average forget the random initial weights quickly.
            decay = min(EMA_DECAY, (1 + step) / (10 + step))
            torch._foreach_lerp_(averaged, [p.detach() for p in parameters], 1.0 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == settings.diffusion_steps - 1:
            log(f"diffusion step {step:5d}  loss {np.mean(losses[-100:]):.4f}")
        if every is not None:
            every(step + 1)
    with torch.no_grad():
        torch._foreach_copy_(parameters, averaged)
    return losses


@torch.no_grad()
def sample_ddim(model: StableDiffusion, tokens: Tensor, empty_tokens: Tensor, seeds: list[int],
                steps: int = 25, guidance: float = 5.0) -> np.ndarray:
    """Deterministic DDIM (Song et al. 2021, eq. 12, sigma = 0) with classifier-free guidance -> uint8."""
    config = model.config
    device = next(model.unet.parameters()).device
    alpha_bar = alphas_cumprod(config).to(device)
    stride = config.num_train_timesteps // steps
    timesteps = list(range(1, config.num_train_timesteps, stride))[::-1]
    context = model.text_encoder(torch.cat([tokens, empty_tokens.expand(len(tokens), -1)]).to(device))[0]
    x = torch.stack([
        torch.randn((config.unet.in_channels, 8, 8), generator=torch.Generator().manual_seed(seed))
        for seed in seeds
    ]).to(device)
    for t in timesteps:
        eps_text, eps_empty = model.unet(torch.cat([x, x]), torch.tensor(float(t)), context).chunk(2)
        eps = eps_empty + guidance * (eps_text - eps_empty)
        a, a_prev = alpha_bar[t], alpha_bar[t - stride] if t - stride >= 0 else alpha_bar[0]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return to_pixels(model.vae.decode(x / config.vae.scaling_factor).cpu())


def adherence(model: StableDiffusion, ids: tuple[Tensor, Tensor], seeds_per_caption: int,
              batch: int = 60) -> float:
    """Share of sampled pictures whose shape, colour and background the judge reads as captioned."""
    scenes = all_scenes()
    jobs = [(i, seed) for seed in range(seeds_per_caption) for i in range(len(scenes))]
    right = 0
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        tokens = ids[0][[i for i, _ in chunk]]
        images = sample_ddim(model, tokens, ids[1], [1000 + seed * 1000 + i for i, seed in chunk])
        right += sum(judge(image).matches(scenes[i]) for image, (i, _) in zip(images, chunk, strict=True))
    return right / len(jobs)


def train(settings: TrainSettings, log: Callable[[str], None] = print) -> tuple[StableDiffusion, dict]:
    """The whole recipe; returns the model (scaling factor in its config) and the facts of the run."""
    torch.set_num_threads(settings.threads)
    # A trained model's tiny weights and activations underflow to subnormal floats, which the CPU
    # computes 4-8x slower (measured on the shipped model): flush them to zero.
    torch.set_flush_denormal(True)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    started = time.monotonic()
    if settings.resume:
        model = load_model(Path(settings.resume) / CHECKPOINT_FILE).model.float()
        model.requires_grad_(True)
        config = model.config
    else:
        config = tiny_shapes_config()
        model = StableDiffusion(config)
        with torch.no_grad():
            model.vae.quant_conv.bias[config.vae.embed_dim :] = INITIAL_LOGVAR
    model.to(settings.device)
    ids = caption_ids(shipped_tokenizer())

    images, scene_index = draw_dataset(settings.images_per_caption, rng)
    log(f"drew {len(images)} pictures in {time.monotonic() - started:.0f} s")
    vae_losses = [] if settings.resume else train_vae(model, images, settings, generator, log)
    model.vae.requires_grad_(False).eval()
    vae_seconds = time.monotonic() - started

    mean, std = encode_posteriors(model, images)
    recon = to_pixels(model.vae.decode(mean[:360:2].to(settings.device)).cpu())
    scenes = all_scenes()
    recon_ok = np.mean([judge(img).matches(scenes[scene_index[2 * k]], check_size=True)
                        for k, img in enumerate(recon)])
    if settings.resume:
        scaling_factor = config.vae.scaling_factor
    else:
        scaling_factor = measure_scaling_factor(mean, std, generator)
        config.vae = dataclasses.replace(config.vae, scaling_factor=scaling_factor)
    log(f"vae reconstructions judged right: {recon_ok:.3f}; latent scaling factor {scaling_factor:.5f}")
    shape_masks = latent_shape_masks(images) if settings.shape_loss_weight else None

    diffusion_losses = train_diffusion(
        model, mean, std, scene_index, ids, settings, generator, log, shape_masks=shape_masks
    )
    model.eval().cpu()
    train_seconds = time.monotonic() - started
    log(f"trained in {train_seconds:.0f} s")
    facts = {
        "settings": dataclasses.asdict(settings),
        "images": len(images),
        "vae_reconstruction_judged_right": float(recon_ok),
        "scaling_factor": scaling_factor,
        "vae_loss_every_25_steps": [round(float(np.mean(vae_losses[i : i + 25])), 5)
                                    for i in range(0, len(vae_losses), 25)],
        "diffusion_loss_every_100_steps": [round(float(np.mean(diffusion_losses[i : i + 100])), 5)
                                           for i in range(0, len(diffusion_losses), 100)],
        "vae_seconds": round(vae_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
    }
    if settings.resume:
        earlier = Path(settings.resume) / TRAINING_FACTS_FILE
        facts["resumed_from"] = json.loads(earlier.read_text()) if earlier.is_file() else None
    return model, facts


def save(model: StableDiffusion, facts: dict, out: Path) -> None:
    """The original-layout checkpoint in half precision, its YAML config, and the facts of the run."""
    out.mkdir(parents=True, exist_ok=True)
    save_original(model, out / CHECKPOINT_FILE, torch.float16)
    write_config_yaml(model.config, out / CONFIG_FILE)
    (out / TRAINING_FACTS_FILE).write_text(json.dumps(facts, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the weights, config and facts")
    for field in dataclasses.fields(TrainSettings):
        flag = f"--{field.name.replace('_', '-')}"
        parser.add_argument(flag, type=type(field.default), default=field.default)
    args = parser.parse_args()
    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    model, facts = train(settings, log=lambda line: print(line, flush=True))
    save(model, facts, args.out)
    if settings.eval_seeds:
        score = adherence(model, caption_ids(shipped_tokenizer()), settings.eval_seeds)
        facts["ddim25_guidance5_adherence"] = score
        print(f"DDIM-25 adherence at guidance 5: {facts['ddim25_guidance5_adherence']:.3f}", flush=True)
        save(model, facts, args.out)


if __name__ == "__main__":
    main()
