"""All exceptions raised by cytostore.

Every message says in one line what was wrong and how to fix it. Subclasses of
:class:`InvalidArgumentError` are malformed or refused input (the CLI turns them into
a usage error with the command's usage line, exit code 2); every other
:class:`CytostoreError` is a one-line failure (exit 1): among them
:class:`NotFoundError`, a well-formed name that the store lacks, whose message
suggests close matches (see :meth:`NotFoundError.for_name`), and a busy or corrupt
store. The house rules are in ``docs/cli-conventions.md``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Self

__all__ = [
    "CytostoreError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnknownCellError",
    "UnknownPatientError",
    "UnknownColumnError",
    "StoreNotFoundError",
    "StoreBusyError",
    "StoreCorruptError",
    "ReadOnlyError",
    "InvalidWhereError",
    "EmptySelectionError",
    "LayoutNotFoundError",
    "UnknownModelError",
    "UnknownEmbeddingSetError",
    "AmbiguousSetError",
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
    "UploadTooLargeError",
    "WriteRefusedError",
]


class CytostoreError(Exception):
    """Base class of every error cytostore raises on purpose."""


class InvalidArgumentError(CytostoreError, ValueError):
    """An argument given by the caller is malformed or refused (CLI exit code 2)."""


#: How many known names a not-found message lists before ``...``.
_MAX_KNOWN = 12


class NotFoundError(CytostoreError, KeyError):
    """A well-formed name (model, head, set, cell, ...) the store lacks (exit 1)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @classmethod
    def for_name(
        cls,
        kind: str,
        name: object,
        known: Iterable[object] | None,
        fix: str,
        where: str | None = None,
    ) -> Self:
        """Return the error for ``name``, suggesting close matches among ``known``.

        The message reads ``no model 'tiny-simcl' in 's'; did you mean 'tiny-simclr'?
        (known: random-tiny, tiny-simclr): <fix>``.

        Args:
            kind: What was looked up (``"model"``, ``"head"``, ``"dataset"``, ...).
            name: The name given.
            known: The names the store has (``None``: too many to list, e.g. cells).
            fix: What to do, in the imperative (``"list them with ..."``).
            where: The store's folder, named in the message when given.

        Returns:
            The error, to be raised by the caller.

        Examples:
            >>> print(NotFoundError.for_name("head", "mlpp", ["mlp", "knn"], "ls"))
            no head 'mlpp'; did you mean 'mlp'? (known: knn, mlp): ls
        """
        msg = f"no {kind} {str(name)!r}" + (f" in {where!r}" if where else "")
        if known is not None:
            names = sorted({str(k) for k in known})
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            listed = ", ".join(names[:_MAX_KNOWN])
            more = ", ..." if len(names) > _MAX_KNOWN else ""
            msg += f" (known: {listed}{more})" if names else f" (there is no {kind})"
        return cls(f"{msg}: {fix}" if fix else msg)


class StoreNotFoundError(NotFoundError, FileNotFoundError):
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


class UnknownModelError(NotFoundError):
    """A model name is not registered in the store."""


class UnknownEmbeddingSetError(NotFoundError):
    """An embedding set (or the model it would come from) does not exist."""


class AmbiguousSetError(UnknownEmbeddingSetError, InvalidArgumentError):
    """No set was named and the store has several (pick one with --model; exit 2)."""


class UnknownHeadError(NotFoundError):
    """A head name is not registered in the store."""


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


class NotInStoreError(NotFoundError):
    """The model, set, head, patient or dataset to remove is not in the store."""


class UnknownCellError(NotFoundError):
    """A cell id is not in the catalog, or has no vector in the set searched."""


class UnknownPatientError(NotFoundError):
    """A patient (bag) id is not in the store, or has no embedded cells."""


class UnknownColumnError(NotFoundError):
    """A well-formed column (or table) name that the catalog does not have."""


class UnknownDatasetError(NotFoundError):
    """A dataset name is not in the store's ``datasets`` table."""


class RelocationRefusedError(CytostoreError):
    """``relocate`` found the sampled images missing or different in the new folder."""


class UploadTooLargeError(InvalidArgumentError):
    """An upload to ``cytostore serve`` is larger than it accepts (HTTP 413)."""


class WriteRefusedError(CytostoreError, PermissionError):
    """A write to a ``cytostore serve --read-only`` server (HTTP 403)."""


class DistributedRunError(CytostoreError):
    """Another process of a multi-process (DDP) run failed; the message names it."""
