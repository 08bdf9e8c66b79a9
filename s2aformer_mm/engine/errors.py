"""Errors whose message says everything: ``tools/*.py`` print ``[s2aformer] ERROR:``
and the message, without a traceback, and exit non-zero."""
from ..checkpoint import CheckpointError, CheckpointMismatchError


class InputNotFoundError(FileNotFoundError):
    """A file or directory the run needs is absent; the tools print only the message."""


class DatasetNotFoundError(InputNotFoundError):
    """A dataset directory / annotation file named by the config is absent or empty."""


class UsageError(ValueError):
    """Options (or a config) the tools refuse up front, with the reason and the fix."""


USER_ERRORS = (InputNotFoundError, UsageError, CheckpointError, CheckpointMismatchError)
