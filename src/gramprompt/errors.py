"""The project's user-facing errors.

Everything that is the user's input's fault (a bad option, file, folder, config or checkpoint)
raises a subclass of :class:`GramError` (a ``ValueError``, so library callers can catch it the usual
way) with a message that names the culprit and what to do. ``gram`` turns these, and the OS and
format errors listed in :data:`USER_ERRORS`, into one ``gram: error: ...`` line and exit code 2; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import yaml
from safetensors import SafetensorError


class GramError(ValueError):
    """Bad input: a clear message, nothing written or lost."""


class RunFolderError(GramError):
    """An output folder that holds another run, or that cannot be written."""


class NonFiniteError(GramError):
    """Parameters or a result that are NaN or infinite."""


# what ``gram`` reports as one error line rather than a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, yaml.YAMLError, SafetensorError,
                                                ModuleNotFoundError)
