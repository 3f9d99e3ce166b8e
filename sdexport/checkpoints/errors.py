"""The one exception the checkpoint readers raise for bad input, and how its messages list names."""

from collections.abc import Sequence


class CheckpointError(ValueError):
    """A checkpoint, folder or config that cannot be read; the message is one line naming the fix."""


def first_names(names: Sequence[str]) -> str:
    """'a, b, c and 4 more': the first three of `names`, so that a message stays one line."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
