"""The exception types of a user's mistake: a bad config value, data file or checkpoint.

The commands print such an error as one line (``segformer-<command>: error: <message>``) and
exit 1; any other exception is a bug, here or in code a user added, and keeps its traceback.
Each type also derives from the built-in one it stands for, so ``except ValueError`` and
``except OSError`` keep catching them.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: config, data, checkpoint or command line."""


class InputError(UserError, ValueError):
    """A value that cannot be used: a config key, a file's content, a checkpoint's weights."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or the config implies) does not exist."""


class UnreadableFileError(UserError, OSError):
    """A file that exists but cannot be read (corrupt, truncated, not an image)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN/inf loss (the message names the batch and what to change)."""


class UnwritableFileError(UserError, OSError):
    """An output that could not be written (no space left, quota, permission, file-size limit);
    the message names the file, the cause and what was kept. ``errno`` is the cause's."""
