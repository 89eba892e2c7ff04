"""Errors that a person can act on.

Every error a user can cause (bad samplesheet, unreadable image, unknown model, impossible
split) is raised as an `AiodError` whose message names the thing (file, row, field) and what was
expected. The CLI prints it as one line, `AIOD ERROR: <message>`, and exits with `EXIT_CODE`;
the pipeline shows that line as the reason the run stopped.
"""

EXIT_CODE = 65  # EX_DATAERR: never in the 104/130-145 range that the pipeline retries.


class AiodError(Exception):
    """A problem with the user's input or settings, explained in one line."""


class InputError(AiodError):
    """An image (or ground-truth mask) that cannot be used: missing, unreadable, ambiguous."""


class SamplesheetError(AiodError):
    """A samplesheet that does not follow the documented columns."""


class ModelError(AiodError):
    """An unknown model, version or parameter, or a parameter out of range."""


class PlanError(AiodError):
    """A substack split that cannot be made (bad count, overlap or memory budget)."""


class ParameterError(AiodError):
    """A pipeline parameter outside the values it can take."""


class CacheError(AiodError):
    """A cache command that cannot be done as asked (unknown or ambiguous key, bad filter)."""
