"""The exported model folder, the one contract between the two halves: sdexport writes it, sdrun reads it.

Every file and folder name and every key of `sdexport_manifest.json` is declared here once; sdexport writes
through these names, and sdrun reads the manifest through `ManifestFacts`, its typed and checked view. The
layout is that of the Hugging Face ONNX exports (optimum), so a folder without our manifest runs too
(DESIGN.md, "The exported folder").
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdrun.config_values import whole_number
from sdrun.errors import ModelFolderError

MODEL_INDEX_FILE = "model_index.json"
MANIFEST_FILE = "sdexport_manifest.json"
GRAPH_FILE = "model.onnx"
# Where sdexport writes a graph's weights when they are large or asked for (onnxruntime memory-maps it).
EXTERNAL_DATA_FILE = GRAPH_FILE + ".data"
# Each component's diffusers config, beside its graph (the VAE's carries scaling_factor).
CONFIG_FILE = "config.json"
SCHEDULER_DIR = "scheduler"
SCHEDULER_CONFIG = f"{SCHEDULER_DIR}/scheduler_config.json"
TOKENIZER_DIR = "tokenizer"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# CLIP's special tokens: unknown words and padding are the end token.
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"

TEXT_ENCODER = "text_encoder"
UNET = "unet"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
# The optional tiny VAE (TAESD), under vae_decoder's and vae_encoder's contracts.
TINY_VAE_DECODER = "vae_decoder_tiny"
TINY_VAE_ENCODER = "vae_encoder_tiny"
# Needed for text-to-image; vae_encoder is needed only for image-to-image and is checked when present.
REQUIRED_GRAPHS = (TEXT_ENCODER, UNET, VAE_DECODER)
REQUIRED_FILES = (
    f"{VAE_DECODER}/{CONFIG_FILE}",
    SCHEDULER_CONFIG,
    f"{TOKENIZER_DIR}/{VOCAB_FILE}",
    f"{TOKENIZER_DIR}/{MERGES_FILE}",
)

# Manifest keys. What sdexport records for people (sdexport inspect) and sdrun does not read:
FORMAT_KEY = "format"  # "sdexport"
FORMAT_VERSION_KEY = "format_version"
NAME_KEY = "name"
CREATED_KEY = "created"
VERSIONS_KEY = "versions"  # of sdexport and of the libraries that made the graphs
EXPORTER_KEY = "exporter"
OPSET_KEY = "opset"
# {relative path: {"size", "sha256"}} of every file but the manifest.
FILES_KEY = "files"
# {"path", "sha256", "kind", "weights", "dtype", "notes"} of the checkpoint the folder was built from.
SOURCE_KEY = "source"
# Its digest and kind: CHECKPOINT_FILE for one file (.ckpt, .safetensors), or "diffusers" for a folder.
SOURCE_SHA256 = "sha256"
SOURCE_KIND = "kind"
CHECKPOINT_FILE = "original"
PRECISION_KEY = "precision"  # "fp32" or "fp16"
QUANTIZATION_KEY = "quantization"
INT8_QUANTIZATIONS = ("int8", "int8-compact")
QUANTIZATIONS = ("none", *INT8_QUANTIZATIONS)
TARGET_KEY = "target"
OPENVINO_TARGET = "openvino"  # attention left unfused for OpenVINO to fuse, fp32 only
TARGETS = ("onnxruntime", OPENVINO_TARGET)
INPAINTING_KEY = "inpainting"  # a 9-channel UNet
# The multiple that latent sides must be of for the UNet graph (1 when it resizes each upsampling to its
# skip connection); folders without it get the one their UNet's depth implies.
LATENT_MULTIPLE_KEY = "latent_size_multiple"
# The CLIP skip the text encoder graph was built with (AUTOMATIC1111's numbering); 1 when absent.
CLIP_SKIP_KEY = "clip_skip"
# The settings the model is meant to be sampled at (sdrun.defaults reads them).
GENERATION_DEFAULTS_KEY = "generation_defaults"
LORAS_KEY = "loras"  # each LoRA merged at export: file, sha256, scale, layout, layers
EMBEDDINGS_KEY = "embeddings"  # textual inversions baked in: file, sha256, token, vectors
TINY_VAE_KEY = "tiny_vae"  # its source files: name, sha256
VALIDATION_KEY = "validation"
# {component: {"graph", "precision", "fused_attentions", "inputs", "outputs", "validation", ...}}
COMPONENTS_KEY = "components"
FUSED_ATTENTIONS_KEY = "fused_attentions"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ManifestFacts:
    """What sdrun takes from a folder's manifest, checked (the manifest may be a stranger's); a folder
    without a manifest has the defaults: nothing quantized, for onnxruntime, CLIP skip 1."""

    quantization: str = "none"
    target: str = "onnxruntime"
    clip_skip: int = 1
    latent_multiple: int | None = None
    fused_attentions: int = 0
    # The sha256 of the checkpoint file the folder was built from (None for a diffusers folder, whose
    # digest is of its files, or when not recorded): the web UI's "Model hash" is its start.
    checkpoint_sha256: str | None = None

    @classmethod
    def read(cls, manifest: Mapping[str, Any]) -> "ManifestFacts":
        latent_multiple = None
        if manifest.get(LATENT_MULTIPLE_KEY) is not None:
            latent_multiple = whole_number(manifest, LATENT_MULTIPLE_KEY, "manifest", 1, 64)
        return cls(
            quantization=_word(manifest, QUANTIZATION_KEY, QUANTIZATIONS, cls.quantization),
            target=_word(manifest, TARGET_KEY, TARGETS, cls.target),
            clip_skip=whole_number(manifest, CLIP_SKIP_KEY, "manifest", 1, 64, 1),
            latent_multiple=latent_multiple,
            fused_attentions=_fused_attentions(manifest),
            checkpoint_sha256=_checkpoint_sha256(manifest),
        )

    @property
    def int8(self) -> bool:
        return self.quantization in INT8_QUANTIZATIONS


def _word(manifest: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = manifest.get(key)
    if value is None:
        return default
    if value not in choices:
        raise ModelFolderError(
            f"manifest {key}={repr(value)[:40]} is not one of {', '.join(choices)}; "
            "export the model folder again"
        )
    return value


def _checkpoint_sha256(manifest: Mapping[str, Any]) -> str | None:
    """The source's digest when the source was one checkpoint file."""
    source = manifest.get(SOURCE_KEY)
    if not isinstance(source, dict) or source.get(SOURCE_KIND) != CHECKPOINT_FILE:
        return None
    digest = source.get(SOURCE_SHA256)
    if digest is None:
        return None
    # It goes into every PNG's text: a stranger's manifest must not put words there.
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ModelFolderError(
            f"manifest {SOURCE_KEY}.{SOURCE_SHA256}={repr(digest)[:40]} is not a sha256 digest; "
            "export the model folder again"
        )
    return digest


def _fused_attentions(manifest: Mapping[str, Any]) -> int:
    """How many onnxruntime-fused attentions the manifest records in the folder's graphs."""
    components = manifest.get(COMPONENTS_KEY)
    if not isinstance(components, dict):
        return 0
    counts = (entry.get(FUSED_ATTENTIONS_KEY) for entry in components.values() if isinstance(entry, dict))
    return sum(count for count in counts if isinstance(count, int) and count > 0)
