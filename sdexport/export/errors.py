"""The exceptions a build raises for problems it can name; the CLI prints them as one line."""


class BuildError(Exception):
    """The build cannot go on; the message names the problem and the fix."""


class ValidationError(BuildError):
    """An exported graph disagrees with its PyTorch module past the component's tolerance."""
