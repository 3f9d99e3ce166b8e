"""Random-weight TAESDs for the tests, as the files people have: a diffusers AutoencoderTiny folder
(`save_pretrained`) and madebyollin's separate decoder and encoder files.

madebyollin's layout (github.com/madebyollin/taesd, `taesd.py`): each half is an `nn.Sequential` saved
on its own, so keys are `<index>.<rest>`. The decoder is
    0 Clamp, 1 conv(4, 64), 2 ReLU, 3-5 Block, 6 Upsample, 7 conv, 8-10 Block, 11 Upsample, 12 conv,
    13-15 Block, 16 Upsample, 17 conv, 18 Block, 19 conv(64, 3)
and diffusers' DecoderTiny holds the same layers from the first conv on (it clamps in `forward`), so
`decoder.layers.N` is madebyollin's `N+1`. The encoder is
    0 conv(3, 64), 1 Block, 2 conv stride 2, 3-5 Block, 6 conv stride 2, 7-9 Block, 10 conv stride 2,
    11-13 Block, 14 conv(64, 4)
and `encoder.layers.N` is madebyollin's `N`. Blocks hold `conv.0`, `conv.2`, `conv.4` (3x3, ReLUs between).
"""

import math
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

# Brings the random decoder's pixels (std ~18 without it) to about [-1, 1], so PNGs are not saturated.
_LAST_DECODER_CONV_GAIN = 0.03


def random_autoencoder_tiny(seed: int = 0) -> AutoencoderTiny:
    """diffusers' AutoencoderTiny at TAESD's (SD 1.x) config with weights that keep the signal alive.

    With PyTorch's default initialisation the activations fade through the ReLU blocks until the output
    is little more than the last bias, which a wrong layer would hardly move. Here convolutions get He's
    initialisation (each block's last one halved, as it adds to the skip), the last decoder convolution
    brings pixels to about [-1, 1], and every bias is drawn too.
    """
    generator = torch.Generator().manual_seed(seed)
    model = AutoencoderTiny().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 4:
                gain = 0.5 if name.endswith("conv.4.weight") else 1.0
                std = gain * math.sqrt(2 / parameter[0].numel())
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            else:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.2 - 0.1)
        model.decoder.layers[-1].weight.mul_(_LAST_DECODER_CONV_GAIN)
    return model


def madebyollin_state_dicts(model: AutoencoderTiny) -> tuple[dict, dict]:
    """(decoder, encoder) state dicts under madebyollin's keys, renamed from diffusers' as above."""
    decoder, encoder = {}, {}
    for key, tensor in model.state_dict().items():
        half, _layers, index, rest = key.split(".", 3)
        if half == "decoder":
            decoder[f"{int(index) + 1}.{rest}"] = tensor.clone()
        else:
            encoder[f"{index}.{rest}"] = tensor.clone()
    return decoder, encoder


def save_madebyollin_files(model: AutoencoderTiny, folder: Path) -> tuple[Path, Path]:
    """`taesd_decoder.safetensors` and `taesd_encoder.pth`, as madebyollin publishes them."""
    decoder, encoder = madebyollin_state_dicts(model)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(decoder, folder / "taesd_decoder.safetensors")
    torch.save(encoder, folder / "taesd_encoder.pth")
    return folder / "taesd_decoder.safetensors", folder / "taesd_encoder.pth"
