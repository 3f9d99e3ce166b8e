"""The entry point: any supported checkpoint or folder -> a built StableDiffusion and what was read."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdexport.checkpoints.diffusers_folder import load_diffusers
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.original import load_original
from sdexport.models import StableDiffusion
from sdrun.folder_layout import CHECKPOINT_FILE


@dataclass
class LoadedModel:
    model: StableDiffusion
    name: str
    source: Path
    kind: str  # sdrun.folder_layout.CHECKPOINT_FILE ("original") or "diffusers"
    weights: str  # "ema", "non-ema" or "only set"
    source_dtype: str  # floating types as stored, e.g. "float16" or "float16+float32"
    notes: list[str] = field(default_factory=list)
    # The LoRAs merged into the weights since (sdexport.checkpoints.lora.merge_loras): file, sha256, scale.
    loras: list[dict[str, Any]] = field(default_factory=list)
    # The textual-inversion embeddings added since (sdexport.checkpoints.embeddings.add_embeddings).
    embeddings: list[dict[str, Any]] = field(default_factory=list)


def load_model(
    source: Path, *, config: Path | None = None, ema: bool | None = None, prediction: str | None = None
) -> LoadedModel:
    """Load a SD 1.x or 2.x checkpoint into float32 modules (eval mode, no gradients).

    source: a `.ckpt`/`.pt`/`.pth`/`.bin` pickle (read with weights_only), a `.safetensors` file, or a
        diffusers folder (weights in one file or sharded, safetensors or pickles, plain or the fp16
        variant: the plain one when both are there).
    config: the model config file (v1-inference.yaml layout) of a single file; without it,
        `<stem>.yaml` beside the file, else the sizes of the family the tensors show (SD 1.x, or
        SD 2.x at 768x768 with v-prediction). Diffusers folders carry their own.
    ema: for files holding both UNet weight sets, True takes the EMA copy (`model_ema.*`), False the
        trained weights; None does what the config file's `model.params.use_ema` says, and without it
        takes the trained weights, as AUTOMATIC1111, the CompVis scripts and diffusers do (an incomplete
        EMA set is never taken by default). True on a file without EMA weights is an error.

    prediction: "epsilon" or "v_prediction" in place of what the config says or assumes (a bare SD 2.x
        file cannot tell; the 512x512 2.x-base models are epsilon).

    Every problem with the input raises CheckpointError with a one-line message starting with `source`.
    """
    source = Path(source)
    try:
        if source.is_dir():
            if config is not None:
                raise CheckpointError(
                    "--config is for single files; a diffusers folder has its config.json files"
                )
            if ema:
                raise CheckpointError("a diffusers folder holds one set of weights; leave out --ema")
            model, dtype, notes = load_diffusers(source)
            if prediction is not None:
                model.config.prediction_type = prediction
            return LoadedModel(model, source.name, source, "diffusers", "only set", dtype, notes)
        if not source.exists():
            raise CheckpointError("no such file or folder")
        loaded = load_original(source, config, ema, prediction)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None
    return LoadedModel(
        loaded.model, source.stem, source, CHECKPOINT_FILE, loaded.weights, loaded.source_dtype, loaded.notes
    )
