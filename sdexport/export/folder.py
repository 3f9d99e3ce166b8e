"""Build the model folder: every component exported and checked, with the files that tools expect beside
them (DESIGN.md, "The exported folder").

The folder is written under a temporary name beside the target and renamed into place at the end, so a
failed or interrupted build leaves no half-written folder and any earlier folder as it was.
"""

import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sdexport.checkpoints import LoadedModel
from sdexport.checkpoints.diffusers_configs import DIFFUSERS_VERSION, scheduler_config_to_diffusers
from sdexport.checkpoints.family import INPAINTING_IN_CHANNELS
from sdexport.checkpoints.taesd_files import LoadedTAESD
from sdexport.export.attention_fusion import fuse_attention_in_file
from sdexport.export.errors import BuildError
from sdexport.export.fp16 import convert_to_fp16
from sdexport.export.inspect_folder import format_size
from sdexport.export.manifest import FORMAT_VERSION, graph_signature, source_sha256, versions, write_manifest
from sdexport.export.onnx_export import DEFAULT_OPSET, MIN_OPSET, export_graph
from sdexport.export.quantize import quantize_int8
from sdexport.export.specs import (
    COMPONENTS,
    LATENT_SIZE_MULTIPLE,
    VALIDATION_SIZES,
    ComponentSpec,
    tiny_vae_components,
)
from sdexport.export.tokenizer_files import add_tokens, write_tokenizer
from sdexport.export.validate import VALIDATION_SEED, Check, check_signature, validate_graph
from sdexport.models import CLIPTextConfig, OpenCLIPTextConfig, StableDiffusionConfig
from sdexport.models.open_clip import PAD_TOKEN as OPEN_CLIP_PAD_TOKEN
from sdrun.defaults import GenerationDefaults
from sdrun.errors import SdrunError
from sdrun.folder_layout import (
    CLIP_SKIP_KEY,
    COMPONENTS_KEY,
    CONFIG_FILE,
    CREATED_KEY,
    EMBEDDINGS_KEY,
    END_TOKEN,
    EXPORTER_KEY,
    EXTERNAL_DATA_FILE,
    FILES_KEY,
    FORMAT_KEY,
    FORMAT_VERSION_KEY,
    FUSED_ATTENTIONS_KEY,
    GENERATION_DEFAULTS_KEY,
    GRAPH_FILE,
    INPAINTING_KEY,
    LATENT_MULTIPLE_KEY,
    LORAS_KEY,
    MODEL_INDEX_FILE,
    NAME_KEY,
    OPENVINO_TARGET,
    OPSET_KEY,
    PRECISION_KEY,
    QUANTIZATION_KEY,
    QUANTIZATIONS,
    SCHEDULER_CONFIG,
    SCHEDULER_DIR,
    SOURCE_KEY,
    SOURCE_KIND,
    SOURCE_SHA256,
    TARGET_KEY,
    TARGETS,
    TINY_VAE_KEY,
    TOKENIZER_DIR,
    VALIDATION_KEY,
    VERSIONS_KEY,
)

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class BuildOptions:
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"  # fp16: for onnxruntime's CUDA provider
    quantize: str = "none"  # int8, int8-compact: for CPUs (sdexport.export.quantize)
    validate: bool = True
    force: bool = False
    # What runs the graphs: onnxruntime (its CPU and CUDA providers run the fused attention), or
    # onnxruntime's OpenVINO provider, which cannot run com.microsoft.MultiHeadAttention (those nodes fall
    # back to the CPU provider and split the graph) and fuses plain attention into its own SDPA: no fusion.
    target: str = "onnxruntime"
    # Generation defaults written into the folder over the model config's: sampler, steps, guidance_scale.
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    # AUTOMATIC1111's "Clip skip" (sdexport.models.clip), baked into the text encoder graph.
    clip_skip: int = 1

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise BuildError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.quantize not in QUANTIZATIONS:
            raise BuildError(f"quantization {self.quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
        if self.precision == "fp16" and self.quantize != "none":
            raise BuildError("fp16 is for CUDA and int8 for CPUs: choose --precision fp16 or --quantize int8")
        if self.target not in TARGETS:
            raise BuildError(f"target {self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.target == OPENVINO_TARGET and (self.precision, self.quantize) != ("fp32", "none"):
            # onnxruntime-openvino 1.24.1 crashes (segfault) on DynamicQuantizeMatMul; OpenVINO picks
            # bfloat16 itself from an fp32 graph.
            raise BuildError(
                "--target openvino builds fp32 graphs (OpenVINO chooses bf16 at run time): "
                "drop --precision and --quantize"
            )
        if self.opset < MIN_OPSET:
            raise BuildError(f"opset {self.opset} is older than these graphs need: give --opset {MIN_OPSET}+")
        if self.clip_skip < 1:
            raise BuildError(f"--clip-skip {self.clip_skip}: give 1 (the last layer, SD 1.x's) or more")
        self._check_generation_defaults()

    def _check_generation_defaults(self) -> None:
        """Refuse defaults that sdrun would refuse when it opens the folder (by sdrun's own check)."""
        try:
            GenerationDefaults.from_manifest({GENERATION_DEFAULTS_KEY: self.generation_defaults})
        except SdrunError as error:
            raise BuildError(f"--default-*: {error}") from None

    def component_precision(self, spec: ComponentSpec) -> str:
        """fp32, fp16 or int8: what this component's graph holds under these options."""
        asked = "int8" if self.quantize != "none" else self.precision
        return asked if asked in spec.tolerances else "fp32"


def check_target(target: Path, force: bool) -> None:
    """Refuse to overwrite an existing folder without `force` (checked before the slow work starts)."""
    if target.exists() and not target.is_dir():
        raise BuildError(f"{target} exists and is not a folder; choose another output with -o")
    if target.exists() and not force:
        raise BuildError(f"{target} already exists; add --force to replace it, or choose another -o")


def build_folder(
    loaded: LoadedModel,
    target: Path,
    options: BuildOptions,
    log: Callable[[str], None] = print,
    tiny_vae: LoadedTAESD | None = None,
) -> dict[str, Any]:
    """Export, check and write the model folder of `loaded` at `target`, with `tiny_vae`'s graphs beside
    the full VAE's when given; returns the manifest written."""
    options.check()
    check_target(target, options.force)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = _sibling(target, "building")
    staging.mkdir()
    try:
        manifest = _write_folder(loaded, staging, options, log, tiny_vae)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = sum(entry["size"] for entry in manifest[FILES_KEY].values())
    log(
        f"Done in {time.perf_counter() - started:.1f} s: {target} ({len(manifest[COMPONENTS_KEY])} graphs, "
        f"{format_size(total)}, {_precision_label(options)}, opset {options.opset})"
    )
    return manifest


def _write_folder(
    loaded: LoadedModel,
    folder: Path,
    options: BuildOptions,
    log: Callable[[str], None],
    tiny_vae: LoadedTAESD | None,
) -> dict[str, Any]:
    loaded.model.float().eval()
    config = loaded.model.config
    _set_clip_skip(config, options.clip_skip)
    specs = COMPONENTS + (_tiny_vae_specs(tiny_vae, loaded) if tiny_vae else ())
    # Made first: a model that diffusers' configs cannot describe fails before the slow exports.
    configs = {spec.name: _json(spec.diffusers_config(config)) for spec in specs}
    log(f"Building {loaded.name} from {loaded.source} ({loaded.kind} checkpoint, weights: {loaded.weights})")
    components = {}
    for spec in specs:
        components[spec.name] = _build_component(spec, loaded, folder, options, log)
        (folder / spec.name / CONFIG_FILE).write_text(configs[spec.name], encoding="utf-8")

    scheduler = scheduler_config_to_diffusers(config)
    (folder / SCHEDULER_DIR).mkdir()
    (folder / SCHEDULER_CONFIG).write_text(_json(scheduler), encoding="utf-8")
    _write_tokenizer(loaded, folder / TOKENIZER_DIR, config.text_encoder.max_position_embeddings)
    index = _model_index(loaded.name, scheduler, _pipeline_class(config))
    (folder / MODEL_INDEX_FILE).write_text(_json(index), encoding="utf-8")

    manifest = {
        FORMAT_KEY: "sdexport",
        FORMAT_VERSION_KEY: FORMAT_VERSION,
        NAME_KEY: loaded.name,
        CREATED_KEY: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        SOURCE_KEY: {
            "path": str(loaded.source.resolve()),
            SOURCE_SHA256: source_sha256(loaded.source),
            SOURCE_KIND: loaded.kind,
            "weights": loaded.weights,
            "dtype": loaded.source_dtype,
            "notes": loaded.notes,
        },
        VERSIONS_KEY: versions(),
        EXPORTER_KEY: "torch.onnx.export(dynamo=True)",
        OPSET_KEY: options.opset,
        PRECISION_KEY: options.precision,
        QUANTIZATION_KEY: options.quantize,
        TARGET_KEY: options.target,
        INPAINTING_KEY: config.unet.in_channels == INPAINTING_IN_CHANNELS,
        LATENT_MULTIPLE_KEY: LATENT_SIZE_MULTIPLE,
        CLIP_SKIP_KEY: options.clip_skip,
        GENERATION_DEFAULTS_KEY: {**config.generation_defaults, **options.generation_defaults},
        LORAS_KEY: loaded.loras,
        EMBEDDINGS_KEY: loaded.embeddings,
        VALIDATION_KEY: {
            "enabled": options.validate,
            "provider": "CPUExecutionProvider",
            "seed": VALIDATION_SEED,
            "reference": "the float32 PyTorch modules",
        },
        COMPONENTS_KEY: components,
    }
    if tiny_vae:
        manifest[TINY_VAE_KEY] = {
            "layout": tiny_vae.layout,
            "files": [{"name": path.name, "sha256": source_sha256(path)} for path in tiny_vae.sources],
        }
    return write_manifest(folder, manifest)


def _set_clip_skip(config: StableDiffusionConfig, clip_skip: int) -> None:
    """Make the text encoder stop at the layer `clip_skip` names (checked against its depth)."""
    text_encoder = config.text_encoder
    if clip_skip == 1:
        return
    if not isinstance(text_encoder, CLIPTextConfig):
        raise BuildError(
            "--clip-skip is for SD 1.x's CLIP text encoder; SD 2.x already uses its penultimate layer "
            "(AUTOMATIC1111 ignores the setting there too): leave it out"
        )
    if clip_skip > text_encoder.num_hidden_layers:
        raise BuildError(
            f"--clip-skip {clip_skip}: the text encoder has {text_encoder.num_hidden_layers} layers; "
            f"give 1 to {text_encoder.num_hidden_layers} (2 is the usual)"
        )
    text_encoder.clip_skip = clip_skip


def _tiny_vae_specs(tiny_vae: LoadedTAESD, loaded: LoadedModel) -> tuple[ComponentSpec, ...]:
    """The tiny VAE's graphs, once it is known to speak this model's latents."""
    tiny, full = tiny_vae.model.config, loaded.model.config.vae
    if (tiny.latent_channels, tiny.downsampling) != (full.embed_dim, full.downsampling):
        raise BuildError(
            f"the tiny VAE takes {tiny.latent_channels}-channel latents at 1/{tiny.downsampling} scale, "
            f"this model's are {full.embed_dim}-channel at 1/{full.downsampling}: use the taesd_ "
            "(SD 1.x) weights, not those for SD3 or FLUX"
        )
    tiny_vae.model.float().eval()
    return tiny_vae_components(tiny_vae.model)


def _build_component(
    spec: ComponentSpec, loaded: LoadedModel, folder: Path, options: BuildOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    config = loaded.model.config
    module = spec.wrap(loaded.model).eval()
    precision = options.component_precision(spec)
    out = folder / spec.name

    started = time.perf_counter()
    if precision == "fp32":
        graph = export_graph(spec, module, config, out, options.opset)
        fused = fuse_attention_in_file(graph) if options.target != OPENVINO_TARGET else 0
    else:
        scratch = folder / ".float32" / spec.name
        float32 = export_graph(spec, module, config, scratch, options.opset)
        fused = fuse_attention_in_file(float32)
        out.mkdir()
        graph = out / GRAPH_FILE
        if precision == "fp16":
            # SD 2.x (its OpenCLIP text encoder tells it): attention in float32, where its logits fit.
            sd2 = isinstance(config.text_encoder, OpenCLIPTextConfig)
            convert_to_fp16(float32, graph, fp32_attention=sd2)
        else:
            quantize_int8(float32, graph, compact=options.quantize == "int8-compact")
        shutil.rmtree(folder / ".float32")
    export_seconds = time.perf_counter() - started

    signature = graph_signature(graph)
    check_signature(spec, config, signature)

    started = time.perf_counter()
    tolerance = spec.tolerances[precision]
    checks: list[Check] = []
    if options.validate:
        checks = validate_graph(spec, module, config, graph, tolerance, VALIDATION_SIZES)
    validate_seconds = time.perf_counter() - started

    files = [path for path in (graph, out / EXTERNAL_DATA_FILE) if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    worst = max(checks, key=lambda check: check.max_abs_error / check.limit, default=None)
    checked = (
        f"validated {validate_seconds:5.1f} s, max error {worst.max_abs_error:.1e} (limit {worst.limit:.1e})"
        if worst
        else "not validated"
    )
    log(f"  {spec.name:<16} {precision}  exported {export_seconds:5.1f} s, {checked}, {format_size(size)}")
    return {
        "graph": graph.relative_to(folder).as_posix(),
        "external_data": (out / EXTERNAL_DATA_FILE).is_file(),
        PRECISION_KEY: precision,
        FUSED_ATTENTIONS_KEY: fused,
        **signature,
        "export_seconds": round(export_seconds, 2),
        VALIDATION_KEY: {
            "tolerance": {"atol": tolerance.atol, "rtol": tolerance.rtol},
            "checks": [check.as_json() for check in checks],
            "max_abs_error": max((check.max_abs_error for check in checks), default=None),
            "seconds": round(validate_seconds, 2),
        },
    }


def _write_tokenizer(loaded: LoadedModel, folder: Path, max_length: int) -> None:
    """The source's own tokenizer when a diffusers folder carries one, else the CLIP tokenizer (padding
    with SD 2.x's "!" for an OpenCLIP text encoder); with the tokens of the embeddings added to it."""
    carried = loaded.source / TOKENIZER_DIR
    if loaded.kind == "diffusers" and carried.is_dir():
        shutil.copytree(carried, folder)
    else:
        sd2 = isinstance(loaded.model.config.text_encoder, OpenCLIPTextConfig)
        write_tokenizer(folder, max_length=max_length, pad_token=OPEN_CLIP_PAD_TOKEN if sd2 else END_TOKEN)
    added = {
        token: token_id
        for embedding in loaded.embeddings
        for token, token_id in zip(embedding["tokens"], embedding["token_ids"], strict=True)
    }
    if added:
        add_tokens(folder, added)


def _pipeline_class(config: StableDiffusionConfig) -> str:
    """diffusers' pipeline for the model: the class name is what makes optimum's ORTDiffusionPipeline open
    an inpainting folder as ORTStableDiffusionInpaintPipeline, an LCM-distilled UNet's as
    ORTLatentConsistencyModelPipeline."""
    if config.unet.in_channels == INPAINTING_IN_CHANNELS:
        return "StableDiffusionInpaintPipeline"
    if config.unet.time_cond_proj_dim:
        return "LatentConsistencyModelPipeline"
    return "StableDiffusionPipeline"


def _model_index(name: str, scheduler: dict[str, Any], pipeline_class: str) -> dict[str, Any]:
    """The pipeline index that diffusers and optimum read (as `optimum-cli export onnx` writes it)."""
    return {
        "_class_name": pipeline_class,
        "_diffusers_version": DIFFUSERS_VERSION,
        "_name_or_path": name,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing target is set aside first and deleted only afterwards."""
    if not target.exists():
        staging.rename(target)
        return
    old = _sibling(target, "replaced")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old)


def _sibling(target: Path, purpose: str) -> Path:
    """A hidden unused name beside `target` (same filesystem, so renames are atomic)."""
    return target.parent / f".{target.name}.{purpose}-{secrets.token_hex(4)}"


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _precision_label(options: BuildOptions) -> str:
    return options.quantize if options.quantize != "none" else options.precision
