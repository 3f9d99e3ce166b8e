"""The errors sdrun reports to a person: each message says what is wrong and how to fix it.

The CLI prints these as one line ("Error: ...") with no traceback; anything else is a bug.
"""


class SdrunError(Exception):
    """A problem with the user's input or files, described in one line."""


class ModelFolderError(SdrunError):
    """The model folder is missing, incomplete or damaged."""


class ProviderError(SdrunError):
    """The requested onnxruntime execution provider is not available."""


class SettingsError(SdrunError):
    """A generation setting is out of range or unknown (size, strength, sampler, init image, ...)."""


class GraphOutputError(SdrunError):
    """A graph returned values that cannot make a picture: NaN or infinite, or of the wrong shape."""
