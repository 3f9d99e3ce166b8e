"""Reading Stable Diffusion 1.x checkpoints: original single files and diffusers folders."""

from sdexport.checkpoints.config_file import read_config_yaml, write_config_yaml
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.load import LoadedModel, load_model
from sdexport.checkpoints.original import save_original

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "load_model",
    "read_config_yaml",
    "save_original",
    "write_config_yaml",
]
