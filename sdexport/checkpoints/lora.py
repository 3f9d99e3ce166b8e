r"""LoRA files merged into the weights before export, so the exported graphs are those of a plain model.

A LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3) adds to a layer's
weight W (out x in) a product of rank r: W' = W + scale * (alpha / r) * B A, with B the "up" matrix
(out x r), A the "down" one (r x in) and `scale` the strength the user asks for. On a convolution, A is a
k x k convolution from `in` to r channels and B a 1x1 one from r to `out` (LoCon), so B A composes into
one k x k kernel.

Two layouts are read, each as diffusers' `load_lora_weights` + `fuse_lora` reads it:
- kohya / AUTOMATIC1111: `lora_unet_<layer>` and `lora_te_<layer>`, each with `lora_down.weight`,
  `lora_up.weight` and `alpha` (no alpha: alpha = r, as kohya's and A1111's loaders take it). <layer> is
  the module path with its dots replaced by underscores, in diffusers' names (`down_blocks_0_attentions_0_
  transformer_blocks_0_attn1_to_q`) or the original ones (`input_blocks_1_1_transformer_blocks_0_...`).
- diffusers / peft (LCM-LoRA, Hyper-SD, TCD): `unet.<layer>` and `text_encoder.<layer>` in diffusers'
  names with `.lora_A.weight` / `.lora_B.weight` (or the older `.lora.down` / `.lora_linear_layer.down`
  forms); alpha from the `lora_adapter_metadata` that diffusers writes into the .safetensors header
  (`lora_alpha`, `alpha_pattern`), else alpha = r, as diffusers assumes.

peft reads `alpha_pattern` keys as regular expressions matched against the end of a module name
(`re.match(rf"(.*\.)?({key})$", name)`, the first key in order that matches wins). A LoRA file is a
stranger's, and such a key can hang the matcher (`([^!]+)+!`) or not compile (`(`), so here a key is a
literal module name or a dotted suffix of one (`key == name` or `name.endswith("." + key)`, first match in
order): the keys diffusers writes (module names such as `down_blocks.1.attentions.0.proj_in`) resolve as
peft resolves them, and a key with any character a module name cannot hold is refused, not guessed at.
`rank_pattern` is not read: the ranks are the tensors' own shapes.

Every value that enters the merge is checked: tensors finite, alpha a finite number, the user's scale
finite and within +-MAX_SCALE, and no update able to move a weight by more than MAX_CHANGE (bounded without
computing it: |scale| |alpha| max|B| max|A|, since the 1/r and the sum over r cancel), so the merged
weights are finite and a broken file is refused here instead of as a NaN in validation.

Layer names are resolved against the model's own layers, each known by its original name and by its
diffusers name (from the one module table of `diffusers_weights`). A file is merged whole or not at all:
any tensor that lands on no layer, or on one of another shape, refuses the file.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from sdexport.checkpoints.diffusers_weights import module_map
from sdexport.checkpoints.errors import CheckpointError, first_names
from sdexport.checkpoints.json_files import parse_json_text
from sdexport.checkpoints.tensor_files import SAFETENSORS_SUFFIX, read_tensor_file
from sdexport.models import StableDiffusion
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES
from sdrun.folder import sha256_of

_COMPONENTS = ("unet", "text_encoder")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
_KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
_PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder"}
# (down, up) name endings of diffusers' files: peft's, then those of diffusers before peft.
_PEFT_PAIRS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)
_ADAPTER_METADATA = "lora_adapter_metadata"
# Adapters of other kinds (LyCORIS and peft variants): their tensors are not a plain B A product.
_OTHER_ADAPTERS = {
    "hada_": "a LoHa adapter",
    "lokr_": "a LoKr adapter",
    "lora_mid": "a LoCon adapter with a Tucker core (lora_mid)",
    "dora_scale": "a DoRA adapter",
    "lora_magnitude_vector": "a DoRA adapter",
    ".diff": "a full weight difference",
}
# Cross-attention widths of other families, told from the LoRA of a UNet's attn2.to_k.
_OTHER_CONTEXT_WIDTHS = {2048: "an SDXL LoRA", 1024: "an SD 2.x LoRA"}
_SDXL_NAMES = ("lora_te1_", "lora_te2_", "text_encoder_2.")
# Strengths people use run from about -2 to 2 (slider LoRAs go to +-10); 100 is far beyond any of them and
# keeps scale * delta finite.
MAX_SCALE = 100.0
# The largest change a merge may make to one weight value: real updates change weights by well under 1, and
# a change beyond this is a broken file, not a style (it also keeps float32 weights finite).
MAX_CHANGE = 1e6
# What a module name (and so a literal alpha_pattern key) is made of.
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file to merge and the strength to merge it at (the `scale` of the module docstring)."""

    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's low-rank update, not yet scaled by the user's strength."""

    layer: str  # original module name, e.g. model.diffusion_model.input_blocks.1.1.proj_in
    down: Tensor  # A: [r, in] or [r, in, k, k]
    up: Tensor  # B: [out, r] or [out, r, 1, 1]
    alpha: float

    def delta(self) -> Tensor:
        """(alpha / r) B A in float32, shaped like the layer's weight."""
        down, up = self.down.float(), self.up.float()
        product = up.flatten(1) @ down.flatten(1)
        return (self.alpha / down.shape[0]) * product.reshape(up.shape[0], *down.shape[1:])


@dataclass(frozen=True)
class Lora:
    spec: LoraSpec
    layout: str  # "kohya" or "diffusers"
    updates: list[LayerUpdate]

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of it."""
        return {
            "file": self.spec.path.name,
            "sha256": sha256_of(self.spec.path),
            "scale": self.spec.scale,
            "layout": self.layout,
            "layers": len(self.updates),
        }


def parse_lora_option(text: str) -> LoraSpec:
    """`FILE` or `FILE:SCALE`. Only the last colon splits, and only when what follows it is a number, so a
    path with colons in it stays whole."""
    path, colon, tail = text.rpartition(":")
    try:
        scale = float(tail) if colon else None
    except ValueError:
        scale = None
    if scale is None:
        if colon and not Path(text).exists() and Path(path).is_file():
            raise CheckpointError(
                f"--lora {text}: the scale {tail!r} is not a number (FILE:SCALE, e.g. :0.8)"
            )
        return LoraSpec(Path(text))
    _check_scale(scale, f"--lora {text}")
    return LoraSpec(Path(path), scale)


def _check_scale(scale: float, where: str) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not abs(scale) <= MAX_SCALE:
        raise CheckpointError(
            f"{where}: the scale must be a finite number from -{MAX_SCALE:g} to {MAX_SCALE:g} "
            "(FILE:SCALE, e.g. :0.8)"
        )


def merge_loras(model: StableDiffusion, specs: Sequence[LoraSpec]) -> list[dict[str, Any]]:
    """Add every LoRA to the weights of `model` at its scale, in order; returns their manifest records.

    All files are read and checked before any weight changes, so a refused file leaves `model` as it was.
    """
    loras = [read_lora(spec, model) for spec in specs]
    layers = dict(model.named_modules())
    with torch.no_grad():
        for lora in loras:
            for update in lora.updates:
                layers[update.layer].weight += lora.spec.scale * update.delta()
    return [lora.record() for lora in loras]


def read_lora(spec: LoraSpec, model: StableDiffusion) -> Lora:
    """The layer updates of a LoRA file for `model`, every one checked against its layer's shape.

    Raises CheckpointError (one line, starting with the file) for an unreadable file, another kind of
    adapter, a LoRA for another family, tensors that map onto no layer, and shapes that do not fit.
    """
    path = spec.path
    _check_scale(spec.scale, f"LoRA {path}")
    try:
        if not path.is_file():
            raise CheckpointError("no such file")
        tensors = read_tensor_file(path)
        _refuse_other_adapters(tensors)
        _refuse_other_families(tensors, model.config.unet.context_dim)
        names = _layer_names(model)
        if any(key.startswith(tuple(_KOHYA_PREFIXES)) for key in tensors):
            layout, updates = "kohya", _kohya_updates(tensors, names.underscored)
        elif any(key.startswith(tuple(_PEFT_PREFIXES)) for key in tensors):
            layout, updates = "diffusers", _peft_updates(tensors, names.diffusers, _adapter_metadata(path))
        else:
            raise CheckpointError(
                "holds no LoRA tensors (lora_unet_*, lora_te_*, unet.*, text_encoder.*), only "
                f"{first_names(list(tensors))}"
            )
        _check_shapes(updates, model)
        for update in updates:
            _check_values(update, spec.scale)
    except CheckpointError as error:
        raise CheckpointError(f"LoRA {path}: {error}") from None
    return Lora(spec, layout, updates)


@dataclass(frozen=True)
class _LayerNames:
    """Every name a LoRA may give a layer -> the layer's original module name, per component."""

    diffusers: dict[str, dict[str, str]]  # dotted diffusers names (diffusers' files)
    underscored: dict[str, dict[str, str]]  # original and diffusers names, dots as underscores (kohya's)


def _layer_names(model: StableDiffusion) -> _LayerNames:
    diffusers: dict[str, dict[str, str]] = {}
    underscored: dict[str, dict[str, str]] = {}
    for component in _COMPONENTS:
        prefix = COMPONENT_PREFIXES[component]
        layers = [
            name
            for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, nn.Linear | nn.Conv2d)
        ]
        named = {}
        for diffusers_module, original_module in module_map(component, model.config).items():
            for layer in layers:
                if layer == original_module or layer.startswith(original_module + "."):
                    named[diffusers_module + layer[len(original_module) :]] = layer
        diffusers[component] = named
        aliases = {**{layer.removeprefix(prefix): layer for layer in layers}, **named}
        underscored[component] = {alias.replace(".", "_"): layer for alias, layer in aliases.items()}
    return _LayerNames(diffusers, underscored)


def _kohya_updates(tensors: Mapping[str, Any], names: Mapping[str, Mapping[str, str]]) -> list[LayerUpdate]:
    groups: dict[str, dict[str, Any]] = {}
    unmatched = []
    for key, value in tensors.items():
        name, _, part = key.partition(".")
        is_value = isinstance(value, Tensor) or (part == "alpha" and isinstance(value, int | float))
        if part in _KOHYA_PARTS and name.startswith(tuple(_KOHYA_PREFIXES)) and is_value:
            groups.setdefault(name, {})[part] = value
        else:
            unmatched.append(key)
    updates = []
    for name, parts in groups.items():
        prefix = next(p for p in _KOHYA_PREFIXES if name.startswith(p))
        layer = names[_KOHYA_PREFIXES[prefix]].get(name.removeprefix(prefix))
        down, up = parts.get("lora_down.weight"), parts.get("lora_up.weight")
        if layer is None or down is None or up is None:
            unmatched += [f"{name}.{part}" for part in parts]
            continue
        alpha = _alpha(parts["alpha"], f"{name}.alpha") if "alpha" in parts else float(down.shape[0])
        updates.append(LayerUpdate(layer, down, up, alpha))
    _refuse_unmatched(unmatched, len(tensors))
    return updates


def _peft_updates(
    tensors: Mapping[str, Any], names: Mapping[str, Mapping[str, str]], metadata: Mapping[str, Any]
) -> list[LayerUpdate]:
    pairs: dict[tuple[str, str], dict[str, Tensor]] = {}
    unmatched = []
    for key, value in tensors.items():
        found = _peft_key(key)
        if found is None or not isinstance(value, Tensor):
            unmatched.append(key)
        else:
            component, module, role = found
            pairs.setdefault((component, module), {})[role] = value
    updates = []
    for (component, module), pair in pairs.items():
        layer = names[component].get(module)
        if layer is None or len(pair) != 2:
            unmatched += [f"{component}.{module} ({role})" for role in pair]
            continue
        config = _adapter_config(metadata, component)
        alpha = _peft_alpha(config, module, rank=pair["down"].shape[0])
        updates.append(LayerUpdate(layer, pair["down"], pair["up"], alpha))
    _refuse_unmatched(unmatched, len(tensors))
    return updates


def _peft_key(key: str) -> tuple[str, str, str] | None:
    """(component, diffusers module name, "down" or "up") of a diffusers LoRA key, or None."""
    for prefix, component in _PEFT_PREFIXES.items():
        if key.startswith(prefix):
            for down, up in _PEFT_PAIRS:
                for role, ending in (("down", down), ("up", up)):
                    if key.endswith(ending):
                        return component, key[len(prefix) : -len(ending)], role
    return None


def _adapter_metadata(path: Path) -> dict[str, Any]:
    """The LoraConfig values diffusers stores in a .safetensors header (`unet.lora_alpha`, ...), or {}."""
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        return {}
    with safe_open(str(path), framework="pt") as file:
        raw = (file.metadata() or {}).get(_ADAPTER_METADATA)
    metadata = parse_json_text(raw, f"its header's {_ADAPTER_METADATA}") if raw else {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"its header's {_ADAPTER_METADATA} is not a JSON object")
    return metadata


def _adapter_config(metadata: Mapping[str, Any], component: str) -> dict[str, Any]:
    config = {
        key.removeprefix(component + "."): v for key, v in metadata.items() if key.startswith(component + ".")
    }
    for option, kind in (
        ("use_dora", "a DoRA adapter"),
        ("use_rslora", "a rank-stabilised LoRA (use_rslora)"),
    ):
        if config.get(option):
            raise CheckpointError(f"is {kind}, which is not merged; use a plain LoRA")
    return config


def _peft_alpha(config: Mapping[str, Any], module: str, rank: int) -> float:
    """The layer's alpha as peft resolves it: the first `alpha_pattern` key naming the module or a dotted
    suffix of its name (literally: see the module docstring), else `lora_alpha`, else the rank (diffusers'
    assumption without metadata)."""
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise CheckpointError(f"its alpha_pattern is {type(patterns).__name__}, not a JSON object")
    for key, alpha in patterns.items():
        if not _MODULE_NAME.fullmatch(key):
            raise CheckpointError(
                f"its alpha_pattern key {key[:80]!r} is not a module name: sdexport matches these keys as "
                "module names or dotted suffixes of them, never as regular expressions"
            )
        if module == key or module.endswith("." + key):
            return _alpha(alpha, f"alpha_pattern[{key!r}]")
    if "lora_alpha" in config:
        return _alpha(config["lora_alpha"], "lora_alpha")
    return float(rank)


def _alpha(value: object, where: str) -> float:
    """An alpha from a file (a number, or a tensor of one value), refused unless finite."""
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        shown = repr(value)[:80] if value is not None else "a tensor of several values"
        raise CheckpointError(f"its {where} is {shown}, not a finite number; the file is broken")
    return float(value)


def _check_values(update: LayerUpdate, scale: float) -> None:
    """Refuse non-finite tensors, and an update that could move a weight by more than MAX_CHANGE."""
    largest = []
    for role, tensor in (("down", update.down), ("up", update.up)):
        values = tensor.detach().float()
        if not torch.isfinite(values).all():
            raise CheckpointError(f"its {role} tensor of {update.layer} holds NaN or infinite values")
        largest.append(float(values.abs().max()) if values.numel() else 0.0)
    bound = abs(scale) * abs(update.alpha) * largest[0] * largest[1]
    if not bound <= MAX_CHANGE:
        raise CheckpointError(
            f"its update of {update.layer} at scale {scale:g} could change a weight by up to {bound:.3g}, "
            f"beyond the {MAX_CHANGE:g} of any working LoRA; the file (or the scale) is broken"
        )


def _check_shapes(updates: Sequence[LayerUpdate], model: StableDiffusion) -> None:
    layers = dict(model.named_modules())
    for update in updates:
        weight = layers[update.layer].weight
        down, up = update.down, update.up
        composed = (up.shape[0], *down.shape[1:])
        fits = (
            down.ndim == up.ndim == weight.ndim
            and up.shape[1] == down.shape[0]
            and up.shape[2:] == (1,) * (up.ndim - 2)
            and composed == tuple(weight.shape)
        )
        if not fits:
            raise CheckpointError(
                f"the update of {update.layer} (up {list(up.shape)}, down {list(down.shape)}) does not "
                f"fit its weight {list(weight.shape)}: a LoRA for a model of other sizes"
            )


def _refuse_other_adapters(tensors: Mapping[str, Any]) -> None:
    for key in tensors:
        for marker, kind in _OTHER_ADAPTERS.items():
            if marker in key:
                raise CheckpointError(
                    f"is {kind} ({key}), not a LoRA: only lora_down/lora_up (kohya) and lora_A/lora_B "
                    "(diffusers, peft) products are merged"
                )


def _refuse_other_families(tensors: Mapping[str, Any], context_dim: int) -> None:
    """Name the family of a LoRA made for SDXL or SD 2.x, before its keys are matched one by one."""
    for key, value in tensors.items():
        if key.startswith(_SDXL_NAMES):
            _refuse_family(f"an SDXL LoRA (a second text encoder: {key})")
        if re.search(r"attn2[._]to_k[._](lora_down|lora_A|lora\.down)", key) and isinstance(value, Tensor):
            width = value.shape[1]
            if width != context_dim and width in _OTHER_CONTEXT_WIDTHS:
                _refuse_family(f"{_OTHER_CONTEXT_WIDTHS[width]} (cross-attention width {width}: {key})")


def _refuse_family(found: str) -> None:
    raise CheckpointError(f"is {found}; this model is SD 1.x: use a LoRA made for SD 1.x")


def _refuse_unmatched(unmatched: list[str], total: int) -> None:
    if unmatched:
        raise CheckpointError(
            f"{len(unmatched)} of its {total} tensors map onto no layer of this SD 1.x model "
            f"({first_names(sorted(unmatched))}); nothing was merged"
        )
