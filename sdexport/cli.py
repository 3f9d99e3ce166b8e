"""`sdexport build` (checkpoint -> checked ONNX model folder) and `sdexport inspect` (what a folder holds)."""

from pathlib import Path

import click

from sdexport.checkpoints import CheckpointError, load_model
from sdexport.export.errors import BuildError
from sdexport.export.folder import PRECISIONS, QUANTIZATIONS, BuildOptions, build_folder, check_target
from sdexport.export.inspect_folder import describe_folder
from sdexport.export.manifest import read_manifest
from sdexport.export.onnx_export import DEFAULT_OPSET
from sdrun.errors import SdrunError
from sdrun.folder import check_manifest

# The model shipped inside the package (trained by `python -m sdexport.tiny.train`), its config file
# `tiny-shapes.yaml` beside it; `sdexport build` with no SOURCE builds it.
EMBEDDED_CHECKPOINT = Path(__file__).parent / "embedded" / "tiny-shapes.safetensors"
DEFAULT_OUTPUT_ROOT = Path("exported")


@click.group()
def main() -> None:
    """Stable Diffusion 1.x checkpoints to ONNX model folders that sdrun (or optimum) runs."""


@main.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Model folder [exported/<name>].")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp16 is for onnxruntime's CUDA provider (inputs and outputs stay float32).")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default="none", show_default=True,
              help="For CPUs. int8: dynamic int8 matrix products (the fastest). int8-compact: "
                   "convolution weights stored in int8 as well (a third of the size; the one for "
                   "`sdrun --low-memory`).")
@click.option("--ema/--no-ema", default=None,
              help="Use the EMA (--ema) or trained (--no-ema) UNet weights [EMA when complete].")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="Model config file (v1-inference.yaml layout) of a single-file checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
@click.option("--skip-validation", is_flag=True, help="Do not check the graphs against PyTorch.")
def build(
    source: Path | None,
    output: Path | None,
    opset: int,
    precision: str,
    quantize: str,
    ema: bool | None,
    config_file: Path | None,
    force: bool,
    skip_validation: bool,
) -> None:
    """Export SOURCE (a .ckpt/.safetensors file or a diffusers folder) to an ONNX model folder.

    Without SOURCE, builds the tiny model embedded in the package into exported/tiny-shapes.
    """
    options = BuildOptions(opset, precision, quantize, validate=not skip_validation, force=force)
    if source is None:
        if not EMBEDDED_CHECKPOINT.is_file():
            raise click.ClickException(
                f"the embedded model {EMBEDDED_CHECKPOINT} is missing (train it with "
                "`python -m sdexport.tiny.train --out sdexport/embedded`); or give a SOURCE checkpoint"
            )
        source = EMBEDDED_CHECKPOINT
    try:
        options.check()
        if output is not None:
            check_target(output, force)
        loaded = load_model(source, config=config_file, ema=ema)
        target = output if output is not None else DEFAULT_OUTPUT_ROOT / loaded.name
        build_folder(loaded, target, options, log=click.echo)
    except (BuildError, CheckpointError) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo("Interrupted: nothing was written; an earlier folder is left as it was.", err=True)
        raise SystemExit(130) from None


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
