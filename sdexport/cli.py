"""`sdexport build` (checkpoint -> checked ONNX model folder) and `sdexport inspect` (what a folder holds)."""

from dataclasses import dataclass, replace
from pathlib import Path

import click

from sdexport import embedded
from sdexport.checkpoints import CheckpointError, load_model
from sdexport.checkpoints.embeddings import EmbeddingSpec, add_embeddings, parse_embedding_option
from sdexport.checkpoints.lora import LoraSpec, merge_loras, parse_lora_option
from sdexport.checkpoints.taesd_files import load_taesd
from sdexport.export.errors import BuildError
from sdexport.export.folder import (
    PRECISIONS,
    QUANTIZATIONS,
    TARGETS,
    BuildOptions,
    build_folder,
    check_target,
)
from sdexport.export.inspect_folder import describe_folder
from sdexport.export.manifest import read_manifest
from sdexport.export.onnx_export import DEFAULT_OPSET
from sdrun.defaults import VAE_CHOICES
from sdrun.errors import SdrunError
from sdrun.folder import check_manifest
from sdrun.samplers import SAMPLERS

# The embedded model's student is built beside it under this suffix (`sdexport build` with no SOURCE).
STUDENT_SUFFIX = "-lcm"
# What the student was distilled for: the teacher's guidance is in its weights, so one UNet pass a step.
STUDENT_DEFAULTS = {"sampler": "lcm", "steps": 4, "guidance_scale": 1.0, "vae": "tiny"}
DEFAULT_OUTPUT_ROOT = Path("exported")


@click.group()
def main() -> None:
    """Stable Diffusion 1.x checkpoints to ONNX model folders that sdrun (or optimum) runs."""


def _lora_specs(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> list[LoraSpec]:
    """The --lora values read as LoraSpecs, so that a bad one stops the command before any work."""
    try:
        return [parse_lora_option(value) for value in values]
    except CheckpointError as error:
        raise click.BadParameter(str(error)) from None


def _embedding_specs(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> list[EmbeddingSpec]:
    """The --embedding values read as EmbeddingSpecs, so that a bad one stops the command before any work."""
    try:
        return [parse_embedding_option(value) for value in values]
    except CheckpointError as error:
        raise click.BadParameter(str(error)) from None


@main.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Model folder [exported/<name>].")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="fp16 is for onnxruntime's CUDA provider (inputs and outputs stay float32).",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default="none",
    show_default=True,
    help="For CPUs. int8: dynamic int8 matrix products (the fastest). int8-compact: "
    "convolution weights stored in int8 as well (a third of the size; the one for "
    "`sdrun --low-memory`).",
)
@click.option(
    "--target",
    "build_target",
    type=click.Choice(TARGETS),
    default="onnxruntime",
    show_default=True,
    help="openvino: for `sdrun --provider openvino` (plain attention, which OpenVINO fuses itself, "
    "instead of onnxruntime's MultiHeadAttention; fp32 only).",
)
@click.option(
    "--ema/--no-ema",
    default=None,
    help="Use the EMA (--ema) or trained (--no-ema) UNet weights of a full checkpoint [the config's "
    "use_ema; without one, the trained weights, as AUTOMATIC1111 and diffusers do].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="Model config file (v1-inference.yaml layout) of a single-file checkpoint.",
)
@click.option(
    "--prediction",
    type=click.Choice(("epsilon", "v_prediction")),
    help="What the UNet predicts, over the config's [a bare SD 2.x file: v_prediction at 768x768, as "
    "SD 2.0-v/2.1; epsilon for the 512x512 2.x-base models].",
)
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
@click.option("--skip-validation", is_flag=True, help="Do not check the graphs against PyTorch.")
@click.option(
    "--tiny-vae",
    "tiny_vae",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Add TAESD beside the full VAE (vae_decoder_tiny/, vae_encoder_tiny/; `sdrun --vae "
    "tiny`): madebyollin's taesd_decoder file, repeated for taesd_encoder, or a diffusers "
    "AutoencoderTiny folder.",
)
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="FILE[:SCALE]",
    callback=_lora_specs,
    help="Merge a LoRA into the weights before export, at SCALE [1.0]; repeat for several. "
    "kohya/AUTOMATIC1111 .safetensors (lora_unet_*, lora_te_*, LoCon included) or "
    "diffusers/peft files (LCM-LoRA, Hyper-SD, TCD). The graphs keep their size and speed.",
)
@click.option(
    "--embedding",
    "embeddings",
    multiple=True,
    metavar="FILE[:TOKEN]",
    callback=_embedding_specs,
    help="Add a textual-inversion embedding that prompts name by TOKEN [AUTOMATIC1111 files: the file's "
    "name; diffusers' learned_embeds: the word stored in it]; repeat for several. AUTOMATIC1111 .pt/"
    ".safetensors or diffusers .bin/.safetensors; an embedding of n vectors takes n tokens.",
)
@click.option(
    "--clip-skip",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="AUTOMATIC1111's Clip skip, baked into the text encoder: the output of the N-th layer from the "
    "last (2 for the anime-style SD 1.x models; diffusers' clip_skip=1 is 2 here).",
)
@click.option(
    "--default-sampler",
    help=f"The folder's default sampler in sdrun ({', '.join(SAMPLERS)}), over the model config's.",
)
@click.option("--default-steps", type=int, help="The folder's default number of steps in sdrun.")
@click.option("--default-guidance", type=float, help="The folder's default guidance scale in sdrun.")
@click.option(
    "--default-vae",
    type=click.Choice(VAE_CHOICES),
    help="The folder's default decoder in sdrun (tiny needs --tiny-vae).",
)
def build(
    source: Path | None,
    output: Path | None,
    opset: int,
    precision: str,
    quantize: str,
    build_target: str,
    ema: bool | None,
    config_file: Path | None,
    prediction: str | None,
    force: bool,
    skip_validation: bool,
    tiny_vae: tuple[Path, ...],
    loras: list[LoraSpec],
    embeddings: list[EmbeddingSpec],
    clip_skip: int,
    default_sampler: str | None,
    default_steps: int | None,
    default_guidance: float | None,
    default_vae: str | None,
) -> None:
    """Export SOURCE (a .ckpt/.safetensors file or a diffusers folder) to an ONNX model folder.

    Without SOURCE, builds the tiny model embedded in the package into exported/tiny-shapes (or -o), and
    its few-step student (the model with its LCM-LoRA baked in and its tiny decoder, sampled with lcm at 4
    steps, guidance 1) beside it, into exported/tiny-shapes-lcm.

    A few-step LoRA wants its settings as the folder's defaults, so that `sdrun PROMPT --model DIR` is
    right without flags; for an LCM-LoRA, for example:

    \b
      --lora lcm-lora-sdv1-5.safetensors --default-sampler lcm --default-steps 4 --default-guidance 1
    """
    given = {
        "sampler": default_sampler,
        "steps": default_steps,
        "guidance_scale": default_guidance,
        "vae": default_vae,
    }
    defaults = {name: value for name, value in given.items() if value is not None}
    options = BuildOptions(
        opset,
        precision,
        quantize,
        validate=not skip_validation,
        force=force,
        target=build_target,
        generation_defaults=defaults,
        clip_skip=clip_skip,
    )
    builds = [_Build(source, output, options, loras, tiny_vae, embeddings)]
    if source is None:
        if not embedded.CHECKPOINT.is_file():
            raise click.ClickException(
                f"the embedded model {embedded.CHECKPOINT} is missing (train it with "
                "`python -m sdexport.tiny.train --out sdexport/embedded`); or give a SOURCE checkpoint"
            )
        builds = [_Build(embedded.CHECKPOINT, output, options, loras, tiny_vae, embeddings)]
        changed = loras or tiny_vae or defaults or embeddings or clip_skip > 1
        if not changed and embedded.STUDENT_LORA.is_file() and embedded.STUDENT_TINY_VAE.is_file():
            builds.append(_student_build(output, options))
    try:
        for planned in builds:  # every option and target checked before the slow work starts
            planned.options.check()
            if planned.output is not None:
                check_target(planned.output, force)
        for planned in builds:
            planned.run(config_file, ema, prediction)
    except (BuildError, CheckpointError) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo("Interrupted: nothing was written; an earlier folder is left as it was.", err=True)
        raise SystemExit(130) from None


@dataclass(frozen=True)
class _Build:
    """One folder to build: SOURCE with its LoRAs merged and its tiny VAE beside, under `name_suffix`."""

    source: Path
    output: Path | None
    options: BuildOptions
    loras: list[LoraSpec]
    tiny_vae: tuple[Path, ...]
    embeddings: list[EmbeddingSpec]
    name_suffix: str = ""

    def run(self, config_file: Path | None, ema: bool | None, prediction: str | None) -> None:
        loaded = load_model(self.source, config=config_file, ema=ema, prediction=prediction)
        loaded.name += self.name_suffix
        loaded.loras = merge_loras(loaded.model, self.loras)
        for lora in loaded.loras:
            click.echo(f"Merged LoRA {lora['file']} at scale {lora['scale']} ({lora['layers']} layers)")
        loaded.embeddings = add_embeddings(loaded.model, self.embeddings)
        for embedding in loaded.embeddings:
            vectors = embedding["vectors"]
            click.echo(f"Added embedding {embedding['file']} as {embedding['token']} ({vectors} vectors)")
        tiny = load_taesd(self.tiny_vae) if self.tiny_vae else None
        target = self.output if self.output is not None else DEFAULT_OUTPUT_ROOT / loaded.name
        build_folder(loaded, target, self.options, log=click.echo, tiny_vae=tiny)


def _student_build(output: Path | None, options: BuildOptions) -> _Build:
    """The embedded model's few-step student, beside the teacher's folder."""
    student_output = None if output is None else output.with_name(output.name + STUDENT_SUFFIX)
    return _Build(
        embedded.CHECKPOINT,
        student_output,
        replace(options, generation_defaults=STUDENT_DEFAULTS),
        [parse_lora_option(str(embedded.STUDENT_LORA))],
        (embedded.STUDENT_TINY_VAE,),
        [],
        STUDENT_SUFFIX,
    )


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Also check every file's size and SHA-256 against the manifest.")
def inspect(folder: Path, verify: bool) -> None:
    """Show what the model FOLDER holds: graphs, inputs and outputs, precision, sizes, validation."""
    try:
        click.echo(describe_folder(folder))
        if verify and read_manifest(folder) is None:
            click.echo("No manifest: nothing to verify against.")
        elif verify:
            check_manifest(folder, verify_checksums=True)
            click.echo("Every file matches the manifest.")
    except (BuildError, SdrunError) as error:
        raise click.ClickException(str(error)) from None
