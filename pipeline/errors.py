"""Errors that reach users: each names the input and what is wrong with it, in one line."""


class CubecastError(ValueError):
    """Base class: the CLI prints these as one line and exits non-zero."""


class InvalidCubeError(CubecastError):
    """The input dataset cannot be encoded as given."""


class CorruptStreamError(CubecastError):
    """Stored bytes do not match the manifest, or a stream does not decode."""


class ManifestError(CubecastError):
    """A manifest is missing, malformed, or belongs to another cube."""


class RecipeError(CubecastError):
    """A dataset recipe failed validation."""


class SourceError(CubecastError):
    """A data source could not be read or downloaded."""


class VerificationError(CubecastError):
    """A sample fails the recipe's quality thresholds."""


class PublishError(CubecastError):
    """A publish target refused or failed."""


class UnsafePathError(CubecastError):
    """A path taken from data (an index, an id, a manifest, an archive) leaves its root."""


class BusyError(CubecastError):
    """Another cubecast process holds the output folder."""
