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


class GraphRunError(SdrunError):
    """onnxruntime could not run a graph on the inputs sdrun gave it (a graph that cannot take them, or
    memory it cannot allocate)."""


# Long enough to recognise a value, short enough that a 60 KB prompt or sampler field stays one line.
QUOTED_CHARACTERS = 80


def quoted(value: object) -> str:
    """`value` as an error message quotes it: repr() of at most QUOTED_CHARACTERS of its text, with "..."
    when cut (a stranger's value would otherwise make a message as long as itself)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= QUOTED_CHARACTERS:
        return repr(value)
    return f"{text[:QUOTED_CHARACTERS]!r}..."
