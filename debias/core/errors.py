"""Errors that the command line turns into a readable message instead of a stack trace.

Every error a user can cause (a bad file, a model that is not there, a wrong option) is a
``DebiasError``: its message says what was wrong, where, and what to do about it.
"""


class DebiasError(Exception):
    """Base class for user-facing errors; the CLI prints the message and exits with status 2."""


class ModelLoadError(DebiasError):
    """A model or classifier could not be loaded (not found, offline, unsafe weights)."""


class InputError(DebiasError):
    """A user-supplied file or option is malformed."""


class EditError(DebiasError):
    """An edit cannot be computed or applied (shapes, alignment, fingerprint mismatch)."""


class GenerationError(DebiasError):
    """Images could not be generated with the chosen settings (e.g. out of memory at one image per call)."""
