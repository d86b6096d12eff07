"""All exceptions raised by cytostore.

Every message says what was wrong and how to fix it. Subclasses of
:class:`InvalidArgumentError` are a caller's mistake (the CLI turns them into a usage
error, exit code 2); every other :class:`CytostoreError` is a one-line failure (exit 1).
"""

from __future__ import annotations

__all__ = [
    "CytostoreError",
    "InvalidArgumentError",
    "StoreNotFoundError",
    "StoreBusyError",
    "StoreCorruptError",
    "ReadOnlyError",
    "InvalidWhereError",
    "EmptySelectionError",
    "LayoutNotFoundError",
    "UnknownModelError",
    "UnknownEmbeddingSetError",
    "UnknownHeadError",
    "StaleHeadError",
    "PickledHeadError",
    "DimensionMismatchError",
    "ConfigMismatchError",
    "TrainingDivergedError",
    "NotFittedError",
    "ImageDecodeError",
    "LabelError",
    "SplitError",
    "WeightsMismatchError",
    "StoreWriteError",
    "HasDependentsError",
    "NotInStoreError",
    "QueryRefusedError",
    "QueryTimeoutError",
    "UnknownDatasetError",
    "RelocationRefusedError",
]


class CytostoreError(Exception):
    """Base class of every error cytostore raises on purpose."""


class InvalidArgumentError(CytostoreError, ValueError):
    """An argument given by the caller is invalid (CLI exit code 2)."""


class StoreNotFoundError(InvalidArgumentError, FileNotFoundError):
    """The store folder or its catalog does not exist."""


class StoreBusyError(CytostoreError, TimeoutError):
    """Another process holds the catalog for writing longer than the busy timeout."""


class StoreCorruptError(CytostoreError):
    """Files of the store disagree with the catalog (sizes, counts, hashes)."""


class PickledHeadError(StoreCorruptError):
    """A head folder holds only an older cytostore's pickle, which is never loaded."""


class ReadOnlyError(InvalidArgumentError):
    """A write was attempted through a read-only entry point (``cytostore sql``)."""


class InvalidWhereError(InvalidArgumentError):
    """A ``--where`` SQL filter does not parse or names a missing column."""


class QueryRefusedError(ReadOnlyError):
    """User SQL is not one read-only query (several statements, COPY, ATTACH, ...)."""


class QueryTimeoutError(CytostoreError, TimeoutError):
    """A query ran past its ``--timeout`` and was interrupted."""


class EmptySelectionError(InvalidArgumentError):
    """A selection (``--where``, label, split) holds no cells."""


class LayoutNotFoundError(InvalidArgumentError):
    """No known dataset layout was found under the given path."""


class UnknownModelError(InvalidArgumentError, KeyError):
    """A model name is not registered in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownEmbeddingSetError(InvalidArgumentError, KeyError):
    """An embedding set (or the model it would come from) does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownHeadError(InvalidArgumentError, KeyError):
    """A head name is not registered in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StaleHeadError(CytostoreError, ValueError):
    """A head was trained on embeddings of model weights that have changed since."""


class DimensionMismatchError(CytostoreError, ValueError):
    """Vectors of one dimension were given to a set or index of another."""


class ConfigMismatchError(InvalidArgumentError):
    """A resumed run's configuration differs from the one it would resume."""


class TrainingDivergedError(CytostoreError, FloatingPointError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


class NotFittedError(CytostoreError, ValueError, AttributeError):
    """An estimator was used before ``fit``."""


class ImageDecodeError(CytostoreError, OSError):
    """A file could not be decoded as an image."""


class LabelError(InvalidArgumentError):
    """Labels cannot support the requested head (one class, too few members, ...)."""


class SplitError(InvalidArgumentError):
    """A split specification or split file cannot be used."""


class WeightsMismatchError(InvalidArgumentError):
    """A weights file (``--init``, ``backbone.pt``) does not fit the chosen backbone."""


class StoreWriteError(CytostoreError, OSError):
    """Writing a store file failed (disk full, permissions); nothing was committed."""


class HasDependentsError(CytostoreError):
    """Something still depends on what ``rm`` was asked to remove (use --cascade)."""


class NotInStoreError(CytostoreError, KeyError):
    """The model, set, head, patient or dataset to remove is not in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(InvalidArgumentError, KeyError):
    """A dataset name is not in the store's ``datasets`` table."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RelocationRefusedError(CytostoreError):
    """``relocate`` found the sampled images missing or different in the new folder."""
