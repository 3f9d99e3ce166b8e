"""The one exception the checkpoint readers raise for bad input."""


class CheckpointError(ValueError):
    """A checkpoint, folder or config that cannot be read; the message is one line naming the fix."""
