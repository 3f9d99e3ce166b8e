"""Distil the embedded tiny-shapes model into its few-step student:
`python -m sdexport.tiny.distill --teacher sdexport/embedded --out sdexport/embedded`.

Two networks, each a file beside the teacher's, each read by `sdexport build` as any user's would be
(`--lcm-steps 0` or `--taesd-steps 0` leaves that one's file as it is; `--resume DIR` continues the
LoRA saved in DIR instead of starting one from zero, its learning rate schedule started afresh):
- an LCM-LoRA (Luo et al. 2023, "LCM-LoRA: A Universal Stable-Diffusion Acceleration Module"): low-rank
  adapters (Hu et al. 2021) on the UNet's linear and convolution layers, trained by latent consistency
  distillation (Luo et al. 2023, "Latent Consistency Models", Algorithm 1): on the 50-step DDIM skeleton
  of the teacher's schedule, the student's consistency function at t_{n+k} is pulled (pseudo-Huber loss,
  Song & Dhariwal 2023) towards its own value at t_n of the teacher's guided DDIM step from t_{n+k}, with
  the boundary-condition scalings that sdrun's `lcm` sampler and diffusers' LCMScheduler use. The
  teacher's guidance is distilled in: the student samples at guidance 1 (one UNet pass a step);
  `--teacher-guidance-high` makes it rise with the noise level, to that value at t = 999, and
  `--shape-loss-weight` weights the loss on the shape's latent pixels, as the teacher's training did. Saved in
  kohya's layout (`lora_unet_<module>.lora_down/lora_up/alpha`). `--lcm-weights unet` distils the whole
  UNet instead (started from the teacher with DIR's LoRA added, under `--resume DIR`) and ships its
  difference from the teacher's as a LoRA of rank `--lora-rank`, truncated by SVD (the closest matrices of
  that rank, Eckart & Young 1936); the biases' and norms' small drift, which a LoRA cannot carry, is left out.
- a tiny decoder (TAESD, madebyollin's architecture, sdexport.models.taesd) trained to reproduce the
  teacher's VAE decoder from the same latents, saved in madebyollin's layout.
"""

import argparse
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sdexport import embedded
from sdexport.checkpoints import load_model
from sdexport.models.stable_diffusion import StableDiffusion
from sdexport.models.taesd import TAESDConfig, TAESDDecoder
from sdexport.tiny.train import (
    alphas_cumprod,
    caption_ids,
    cosine_lr,
    draw_dataset,
    encode_posteriors,
    foreground_weight,
    latent_shape_masks,
    shipped_tokenizer,
)
from sdrun.samplers.consistency import SIGMA_DATA, TIMESTEP_SCALING
from sdrun.schedule import SD1_SCHEDULE

# LCMScheduler's defaults, as sdrun's lcm sampler takes them: the DDIM skeleton of 50 steps, and the
# scalings' sigma_data and time scale.
SKELETON_STEPS = SD1_SCHEDULE["original_inference_steps"]
HUBER_C = 0.001
# What distill_lcm trains: adapters of rank lora_rank, or the whole UNet, shipped at rank lora_rank.
LCM_WEIGHTS = ("lora", "unet")


@dataclasses.dataclass
class DistillSettings:
    seed: int = 0
    images_per_caption: int = 16
    lora_rank: int = 16
    lcm_weights: str = "lora"
    lcm_steps: int = 2000
    lcm_batch: int = 48
    lcm_lr: float = 1e-3
    teacher_guidance: float = 4.0
    teacher_guidance_high: float = 0.0
    shape_loss_weight: float = 0.0
    taesd_steps: int = 3000
    taesd_batch: int = 32
    taesd_lr: float = 1e-3
    threads: int = 2
    resume: str = ""


class LoRA(nn.Module):
    """W x + (alpha / rank) up(down(x)) over a frozen linear or convolution layer (Hu et al. 2021, eq. 3);
    `up` starts at zero, so training starts from the teacher. alpha = rank: the scale is 1."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        if isinstance(base, nn.Linear):
            self.down: nn.Module = nn.Linear(base.in_features, rank, bias=False)
            self.up: nn.Module = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(self.down(x))


def _kohya_key(module_name: str) -> str:
    return "lora_unet_" + module_name.replace(".", "_")


def adapted_layers(unet: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """The layers a LoRA adapts: every linear and convolution layer, by module name."""
    return [
        (name, module) for name, module in unet.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)
    ]


def add_lora(unet: nn.Module, rank: int) -> dict[str, LoRA]:
    """Wrap every linear and convolution layer of `unet` in a LoRA, in place; by module name."""
    adapters = {}
    for name, module in adapted_layers(unet):
        parent_name, _, child = name.rpartition(".")
        adapter = LoRA(module, rank)
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, adapter)
        adapters[name] = adapter
    return adapters


def kohya_state(adapters: dict[str, LoRA], rank: int) -> dict[str, Tensor]:
    """The adapters in kohya's layout, named by the original checkpoint's module paths."""
    state = {}
    for name, adapter in adapters.items():
        key = _kohya_key(name)
        state[f"{key}.lora_down.weight"] = adapter.down.weight.detach().to(torch.float16).contiguous()
        state[f"{key}.lora_up.weight"] = adapter.up.weight.detach().to(torch.float16).contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return state


def low_rank_difference(teacher: nn.Module, student: nn.Module, rank: int) -> dict[str, Tensor]:
    """student - teacher for every linear and convolution weight as a LoRA of at most `rank` (its SVD,
    truncated), in kohya_state's layout."""
    state = {}
    teacher_modules = dict(teacher.named_modules())
    for name, module in adapted_layers(student):
        difference = (module.weight - teacher_modules[name].weight).detach().flatten(1)
        u, s, vh = torch.linalg.svd(difference, full_matrices=False)
        kept = min(rank, len(s))
        up = u[:, :kept] * s[:kept].sqrt()
        down = (s[:kept].sqrt()[:, None] * vh[:kept]).reshape(kept, *module.weight.shape[1:])
        key = _kohya_key(name)
        state[f"{key}.lora_down.weight"] = down.to(torch.float16).contiguous()
        state[f"{key}.lora_up.weight"] = up.reshape(*up.shape, *[1] * (down.dim() - 2)).half().contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(kept), dtype=torch.float16)
    return state


def add_kohya_state(unet: nn.Module, state: dict[str, Tensor]) -> None:
    """Add a LoRA in kohya_state's layout (any rank, scaled by its alpha) into `unet`'s weights, in place."""
    with torch.no_grad():
        for name, module in adapted_layers(unet):
            key = _kohya_key(name)
            down, up = state[f"{key}.lora_down.weight"].float(), state[f"{key}.lora_up.weight"].float()
            scale = state[f"{key}.alpha"].float() / len(down)
            module.weight += scale * (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)


def load_kohya_state(adapters: dict[str, LoRA], state: dict[str, Tensor]) -> None:
    """Set the adapters from `kohya_state`'s layout; every adapter must be in `state`."""
    with torch.no_grad():
        for name, adapter in adapters.items():
            key = _kohya_key(name)
            adapter.down.weight.copy_(state[f"{key}.lora_down.weight"].float())
            adapter.up.weight.copy_(state[f"{key}.lora_up.weight"].float())


def boundary_scalings(t: Tensor) -> tuple[Tensor, Tensor]:
    """c_skip and c_out of the consistency function f(x, t) = c_skip x + c_out x0(x, t) (LCM, eq. 4),
    with LCMScheduler's sigma_data and time scale: c_skip -> 1 and c_out -> 0 as t -> 0."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def predicted_x0(x: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    a = alpha_bar[:, None, None, None]
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def consistency(unet: nn.Module, x: Tensor, t: Tensor, context: Tensor, alpha_bar: Tensor) -> Tensor:
    c_skip, c_out = boundary_scalings(t)
    return c_skip * x + c_out * predicted_x0(x, unet(x, t, context), alpha_bar[t])


def teacher_guidance(t: Tensor, settings: DistillSettings, timesteps: int) -> Tensor:
    """[B, 1, 1, 1]: the guidance of the teacher's step from each t, `teacher_guidance` at t = 0 rising
    linearly to `teacher_guidance_high` at the last timestep (0: no rise). The first of 2 steps, from pure
    noise, decides the shape, and a stronger guidance there makes it decide; the steps at lower noise keep
    the teacher's own guidance, which a guidance drawn per latent in [4, 8] did not (issue 12's notes)."""
    low, high = settings.teacher_guidance, settings.teacher_guidance_high or settings.teacher_guidance
    return (low + (high - low) * t.float() / (timesteps - 1))[:, None, None, None]


def latent_batches(
    mean: Tensor, std: Tensor, scale: float, batch: int, steps: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """(indices, scaled posterior samples) for each step."""
    for _ in range(steps):
        pick = torch.randint(len(mean), (batch,), generator=generator)
        yield pick, (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=generator)) * scale


def distill_lcm(
    teacher: StableDiffusion,
    mean: Tensor,
    std: Tensor,
    scene_index: np.ndarray,
    shape_masks: Tensor,
    settings: DistillSettings,
    generator: torch.Generator,
    log: Callable[[str], None],
) -> tuple[dict[str, Tensor], list[float]]:
    """Latent consistency distillation of the teacher's guided DDIM ODE into a LoRA on a copy of its UNet,
    the loss weighted by 1 + settings.shape_loss_weight on the shape's latent pixels, as the teacher's was."""
    config = teacher.config
    alpha_bar = alphas_cumprod(config)
    stride = config.num_train_timesteps // SKELETON_STEPS
    skeleton = torch.arange(1, SKELETON_STEPS + 1) * stride - 1  # 19, 39, ..., 999 as LCMScheduler's
    caption_tokens, empty_tokens = caption_ids(shipped_tokenizer())
    with torch.no_grad():
        contexts = teacher.text_encoder(caption_tokens)[0]
        empty = teacher.text_encoder(empty_tokens)[0]
    student = copy.deepcopy(teacher.unet)
    resumed = load_file(Path(settings.resume) / embedded.STUDENT_LORA_FILE) if settings.resume else None
    if settings.lcm_weights == "unet":
        adapters = None
        if resumed is not None:
            add_kohya_state(student, resumed)
        parameters = list(student.requires_grad_(True).parameters())
    else:
        adapters = add_lora(student.requires_grad_(False), settings.lora_rank)
        if resumed is not None:
            load_kohya_state(adapters, resumed)
        parameters = [
            p for adapter in adapters.values() for p in (*adapter.down.parameters(), *adapter.up.parameters())
        ]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lcm_lr, weight_decay=0.0)
    scenes = torch.from_numpy(scene_index)
    losses = []
    batches = latent_batches(
        mean, std, config.vae.scaling_factor, settings.lcm_batch, settings.lcm_steps, generator
    )
    for step, (pick, latents) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.lcm_steps, settings.lcm_lr, warmup=50)
        context = contexts[scenes[pick]]
        index = torch.randint(SKELETON_STEPS, (len(pick),), generator=generator)
        start, target_t = skeleton[index], (skeleton[index] - stride).clamp(min=0)
        noise = torch.randn(latents.shape, generator=generator)
        a_start = alpha_bar[start][:, None, None, None]
        noisy = a_start.sqrt() * latents + (1 - a_start).sqrt() * noise
        prediction = consistency(student, noisy, start, context, alpha_bar)
        with torch.no_grad():
            eps_text, eps_empty = teacher.unet(
                torch.cat([noisy, noisy]),
                torch.cat([start, start]),
                torch.cat([context, empty.expand_as(context)]),
            ).chunk(2)
            w = teacher_guidance(start, settings, config.num_train_timesteps)
            eps = eps_empty + w * (eps_text - eps_empty)
            a_prev = alpha_bar[target_t][:, None, None, None]
            x_prev = a_prev.sqrt() * predicted_x0(noisy, eps, alpha_bar[start]) + (1 - a_prev).sqrt() * eps
            target = consistency(student, x_prev, target_t, context, alpha_bar)
        huber = ((prediction - target) ** 2 + HUBER_C**2).sqrt() - HUBER_C
        loss = (huber * (1.0 + settings.shape_loss_weight * shape_masks[pick])).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == settings.lcm_steps - 1:
            log(f"lcm step {step:5d}  loss {np.mean(losses[-100:]):.5f}")
    if adapters is None:
        return low_rank_difference(teacher.unet, student, settings.lora_rank), losses
    return kohya_state(adapters, settings.lora_rank), losses


def distill_taesd(
    teacher: StableDiffusion,
    mean: Tensor,
    std: Tensor,
    settings: DistillSettings,
    generator: torch.Generator,
    log: Callable[[str], None],
) -> tuple[dict[str, Tensor], list[float]]:
    """A TAESD decoder trained to give, from the diffusion model's latents, what the teacher's VAE decoder
    gives (in [0, 1]); shape-weighted L1 + L2 as the VAE itself was trained."""
    scale = teacher.config.vae.scaling_factor
    decoder = TAESDDecoder(TAESDConfig())
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=settings.taesd_lr, weight_decay=0.0)
    losses = []
    batches = latent_batches(mean, std, scale, settings.taesd_batch, settings.taesd_steps, generator)
    for step, (_, latents) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.taesd_steps, settings.taesd_lr, warmup=50)
        with torch.no_grad():
            target = (teacher.vae.decode(latents / scale).clamp(-1, 1) + 1) / 2
        error = (decoder(latents) - target).abs()
        loss = (foreground_weight(target * 2 - 1) * (error + error**2)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == settings.taesd_steps - 1:
            log(f"taesd step {step:5d}  loss {np.mean(losses[-100:]):.5f}")
    return {
        key: value.detach().to(torch.float16).contiguous() for key, value in decoder.state_dict().items()
    }, losses


def distill(
    teacher_dir: Path, out: Path, settings: DistillSettings, log: Callable[[str], None] = print
) -> dict:
    torch.set_num_threads(settings.threads)
    # A trained model's tiny weights and activations underflow to subnormal floats, which the CPU
    # computes 4-8x slower (measured on the shipped model): flush them to zero.
    torch.set_flush_denormal(True)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    started = time.monotonic()
    teacher = load_model(teacher_dir / embedded.CHECKPOINT_FILE).model.float().eval().requires_grad_(False)
    images, scene_index = draw_dataset(settings.images_per_caption, np.random.default_rng(settings.seed))
    mean, std = encode_posteriors(teacher, images)
    out.mkdir(parents=True, exist_ok=True)

    facts_path = out / embedded.STUDENT_TRAINING_FACTS_FILE
    # Each part's facts are kept until that part is distilled again.
    facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
    parts = {
        "lcm": (settings.lcm_steps, embedded.STUDENT_LORA_FILE),
        "taesd": (settings.taesd_steps, embedded.STUDENT_TINY_VAE_FILE),
    }
    for part, (steps, file) in parts.items():
        if not steps:
            continue
        part_started = time.monotonic()
        if part == "lcm":
            masks = latent_shape_masks(images)
            state, losses = distill_lcm(teacher, mean, std, scene_index, masks, settings, generator, log)
        else:
            state, losses = distill_taesd(teacher, mean, std, settings, generator, log)
        save_file(state, out / file)
        earlier = _earlier_facts(Path(settings.resume), part) if settings.resume and part == "lcm" else None
        facts[part] = {
            "settings": dataclasses.asdict(settings),
            "loss_every_100_steps": _every(losses, 100),
            "seconds": round(time.monotonic() - part_started, 1),
            "torch": torch.__version__,
            **({"resumed_from": earlier} if earlier else {}),
        }
        facts_path.write_text(json.dumps(facts, indent=1) + "\n")
    log(f"distilled in {time.monotonic() - started:.0f} s into {out}")
    return facts


def _earlier_facts(folder: Path, part: str) -> dict | None:
    path = folder / embedded.STUDENT_TRAINING_FACTS_FILE
    return json.loads(path.read_text()).get(part) if path.is_file() else None


def _every(losses: list[float], n: int) -> list[float]:
    return [round(float(np.mean(losses[i : i + n])), 6) for i in range(0, len(losses), n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher",
        type=Path,
        default=embedded.FOLDER,
        help="folder of the teacher's tiny-shapes.safetensors",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the LoRA, the decoder and the facts"
    )
    for field in dataclasses.fields(DistillSettings):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(field.default),
            default=field.default,
            choices=LCM_WEIGHTS if field.name == "lcm_weights" else None,
        )
    args = parser.parse_args()
    settings = DistillSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DistillSettings)})
    distill(args.teacher, args.out, settings, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
