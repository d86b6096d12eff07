"""The heads' base class: scikit-learn's estimator contract plus what it lacks.

Every head subclasses scikit-learn's ``ClassifierMixin`` and ``BaseEstimator``, so
``get_params``/``set_params``, ``repr``, ``score``, ``clone``, ``Pipeline``,
``GridSearchCV`` and ``cross_val_score`` are scikit-learn's own. Parameters are
declared in ``_parameter_constraints`` with scikit-learn's ``Interval`` and
``StrOptions`` and checked at the start of ``fit``. What scikit-learn lacks, and is
kept here (one line each):

- :meth:`BaseHead.get_state` / :meth:`BaseHead.from_state`: save a fitted head as
  numeric arrays + JSON, because a store never unpickles anything;
- :func:`encode_classes` / :func:`decode_classes`: ``classes_`` in that JSON;
- :meth:`BaseHead._validate_params`: raises cytostore's ``InvalidArgumentError``
  (exit code and one-line message of the CLI) instead of sklearn's error;
- :meth:`BaseHead._check_fitted`: raises cytostore's ``NotFittedError`` likewise;
- :func:`balanced_weights`: sklearn's ``balanced`` weights as a float32 vector that
  keeps a class absent from a training part at weight 0 (sklearn refuses it);
- :func:`seeded`, :func:`load_module_state`: torch's RNG and state dicts;
- :func:`as_matrix`: float32 matrices with cytostore's error messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, ClassifierMixin

# sklearn's declarative parameter table (private module, stable since sklearn 1.2).
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)

from cytostore._torch import resolve_device
from cytostore.errors import InvalidArgumentError, LabelError, NotFittedError

__all__ = [
    "BaseHead",
    "Integral",
    "Interval",
    "Real",
    "StrOptions",
    "as_matrix",
    "balanced_weights",
    "decode_classes",
    "encode_classes",
    "load_module_state",
    "resolve_device",
    "seeded",
]

#: numpy dtype kinds a head's state arrays may have: bool, signed, unsigned, float.
STATE_KINDS = "biuf"


def balanced_weights(
    y_idx: npt.NDArray[np.int64], n_classes: int
) -> npt.NDArray[np.float32]:
    """Return per-class weights ``n / (n_classes * count)`` (sklearn's ``balanced``).

    Examples:
        >>> balanced_weights(np.array([0, 0, 0, 1]), 2).tolist()
        [0.6666666865348816, 2.0]
    """
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, y_idx.size / (n_classes * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring it afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def encode_classes(classes: npt.NDArray[Any]) -> dict[str, Any]:
    """Return ``classes_`` as JSON: ``{"dtype": ..., "values": [...]}``.

    Examples:
        >>> encode_classes(np.array(["a", "b"]))
        {'dtype': '<U1', 'values': ['a', 'b']}
    """
    dtype = "object" if classes.dtype.kind == "O" else classes.dtype.str
    values = [v.item() if isinstance(v, np.generic) else v for v in classes.tolist()]
    return {"dtype": dtype, "values": values}


def decode_classes(doc: Any) -> npt.NDArray[Any]:
    """Return the ``classes_`` array that :func:`encode_classes` described.

    Raises:
        ValueError: If ``doc`` is not such a description (strings, numbers, bools).
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list):
        raise ValueError("classes must be {'dtype': ..., 'values': [...]}")
    values = doc["values"]
    if not all(isinstance(v, str | int | float | bool) for v in values):
        raise ValueError("classes must be strings, numbers or booleans")
    if doc.get("dtype") == "object":
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    dtype = np.dtype(str(doc.get("dtype")))
    if dtype.kind not in STATE_KINDS + "U":
        raise ValueError(f"classes dtype {dtype.str!r} is not allowed")
    return np.asarray(values, dtype=dtype)


class BaseHead(ClassifierMixin, BaseEstimator):
    """Base of every head: sklearn's contract, label encoding, saving without pickle.

    A fitted head is saved without pickle: :meth:`get_state` returns its learned
    state as numeric arrays (``_state_arrays``, and a torch module's ``state_dict``
    under ``module_.``) plus a JSON-able document (parameters, ``classes_``, the
    learned numbers of ``_state_values``), and :meth:`from_state` rebuilds it.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}
    #: Learned attributes saved as numeric arrays.
    _state_arrays: ClassVar[tuple[str, ...]] = ()
    #: Learned attributes saved as JSON numbers.
    _state_values: ClassVar[tuple[str, ...]] = ("n_features_in_",)

    classes_: npt.NDArray[Any]

    def get_state(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        """Return the fitted head as numeric arrays and a JSON-able document.

        Returns:
            ``(arrays, doc)``: ``{name: array}`` of bool/int/float dtypes only (no
            objects, no strings), and ``{"class", "params", "classes", "learned"}``,
            from which :meth:`from_state` rebuilds an equal head.

        Raises:
            NotFittedError: If called before ``fit``.
            TypeError: If a state array is not numeric.
        """
        self._check_fitted()
        arrays = {
            name: np.ascontiguousarray(getattr(self, name))
            for name in self._state_arrays
        }
        module = self._state_module()
        if module is not None:
            for key, tensor in module.state_dict().items():
                arrays[f"module_.{key}"] = tensor.detach().cpu().numpy().copy()
        for name, arr in arrays.items():
            if arr.dtype.kind not in STATE_KINDS:
                raise TypeError(f"state array {name} has non-numeric dtype {arr.dtype}")
        params = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in self.get_params(deep=False).items()
        }
        learned = {name: _plain(getattr(self, name)) for name in self._state_values}
        learned.update(self._extra_state())
        doc = {
            "class": type(self).__name__,
            "params": params,
            "classes": encode_classes(np.asarray(self.classes_)),
            "learned": learned,
        }
        return arrays, doc

    @classmethod
    def from_state(
        cls, arrays: dict[str, npt.NDArray[Any]], doc: dict[str, Any]
    ) -> BaseHead:
        """Rebuild a fitted head from :meth:`get_state`'s ``(arrays, doc)``.

        Returns:
            The head, predicting exactly as the one that was saved.

        Raises:
            ValueError: If the document or the arrays do not describe a head of
                this class (wrong class, unknown parameter, missing or misshapen
                array, non-numeric dtype).
        """
        if doc.get("class") != cls.__name__:
            raise ValueError(
                f"the state is of {doc.get('class')!r}, not {cls.__name__}"
            )
        params = doc.get("params")
        if not isinstance(params, dict) or set(params) - set(cls._get_param_names()):
            raise ValueError(f"the state's parameters do not fit {cls.__name__}")
        head = cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        )
        head.classes_ = decode_classes(doc.get("classes"))
        for name, arr in arrays.items():
            if arr.dtype.kind not in STATE_KINDS:
                raise ValueError(f"state array {name} has dtype {arr.dtype}")
        module_keys = {k for k in arrays if k.startswith("module_.")}
        if set(arrays) - module_keys != set(cls._state_arrays):
            raise ValueError(
                f"the state arrays {sorted(arrays)} do not fit {cls.__name__}"
            )
        for name in cls._state_arrays:
            setattr(head, name, arrays[name])
        learned = doc.get("learned")
        if not isinstance(learned, dict):
            raise ValueError("the state has no 'learned' values")
        for name in cls._state_values:
            value = learned.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"the state's value {name!r} is not a number")
            setattr(head, name, value)
        head._load_extra_state(learned)
        head._load_module_state(
            {k.removeprefix("module_."): arrays[k] for k in module_keys}
        )
        return head

    def _state_module(self) -> Any:
        """Return the torch module whose ``state_dict`` is saved (``None``: none)."""
        return None

    def _extra_state(self) -> dict[str, Any]:
        """Return learned values that need converting to JSON (see ``_load_...``)."""
        return {}

    def _load_extra_state(self, learned: dict[str, Any]) -> None:
        """Set the learned values that :meth:`_extra_state` converted."""

    def _load_module_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Rebuild the torch module from its ``state_dict`` arrays.

        Raises:
            ValueError: If a head without a module gets module arrays.
        """
        if state:
            raise ValueError(f"{type(self).__name__} has no torch module")

    def _validate_params(self) -> None:
        """Check the parameters against ``_parameter_constraints`` (sklearn's rules).

        Raises:
            InvalidArgumentError: Naming the parameter, its value and what is allowed.
        """
        try:
            validate_parameter_constraints(
                self._parameter_constraints,
                self.get_params(deep=False),
                caller_name=type(self).__name__,
            )
        except InvalidParameterError as exc:
            raise InvalidArgumentError(
                f"{exc} Pass an allowed value or leave the default."
            ) from None

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y) first"
            )

    def _encode_labels(self, y: Any) -> npt.NDArray[np.int64]:
        """Set ``classes_`` (sorted unique labels) and return ``y`` as class indices.

        Raises:
            LabelError: If ``y`` holds fewer than two classes.
        """
        y_arr = np.asarray(y)
        if y_arr.ndim != 1:
            raise LabelError(f"y must be one-dimensional, got shape {y_arr.shape}")
        classes, y_idx = np.unique(y_arr, return_inverse=True)
        if classes.size < 2:
            raise LabelError(
                f"{type(self).__name__} needs at least two classes, got "
                f"{classes.tolist()}: select cells of more classes"
            )
        self.classes_ = classes
        return y_idx.astype(np.int64)

    def _prepare_fit(
        self, X: Any, y: Any
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Validate the parameters, ``X`` (n, dim) and ``y`` (n,); set ``classes_``.

        Returns:
            ``X`` as a float32 matrix and ``y`` as class indices into ``classes_``.

        Raises:
            InvalidArgumentError: If a parameter or ``X`` is invalid, or ``X`` and
                ``y`` differ in length.
            LabelError: If ``y`` holds fewer than two classes.
        """
        self._validate_params()
        Xf = as_matrix(X)
        y_idx = self._encode_labels(y)
        if Xf.shape[0] != y_idx.size:
            raise InvalidArgumentError(
                f"X has {Xf.shape[0]} rows but y has {y_idx.size} labels: "
                "pass one label per row of X"
            )
        return Xf, y_idx

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:  # pragma: no cover
        """Return class probabilities, shape (n, n_classes), ``classes_`` order."""
        raise NotImplementedError

    def predict(self, X: Any) -> npt.NDArray[Any]:
        """Return the most probable class of each sample, shape (n,).

        Raises:
            NotFittedError: If called before ``fit``.
        """
        proba = self.predict_proba(X)
        return np.asarray(self.classes_)[np.argmax(proba, axis=1)]


def _plain(value: Any) -> Any:
    """Return a numpy scalar as a Python number (JSON-able)."""
    return value.item() if isinstance(value, np.generic) else value


def load_module_state(module: Any, state: dict[str, npt.NDArray[Any]]) -> None:
    """Load ``{key: array}`` into a torch module, strictly (every key, every shape).

    Raises:
        ValueError: If a key is missing or unexpected, or a shape differs.
    """
    import torch

    try:
        module.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True
        )
    except RuntimeError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    module.eval()


def as_matrix(X: Any, n_features: int | None = None) -> npt.NDArray[np.float32]:
    """Return ``X`` as a C-contiguous float32 (n, dim) matrix.

    Raises:
        InvalidArgumentError: If ``X`` is not 2-D, holds non-finite values, or its
            width differs from ``n_features``.
    """
    arr = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if arr.ndim != 2:
        raise InvalidArgumentError(
            f"X must be a (n_samples, dim) matrix, got shape {arr.shape}"
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise InvalidArgumentError(
            f"X has {arr.shape[1]} features but the head was fitted on {n_features}: "
            "use embeddings of the same model"
        )
    if not np.isfinite(arr).all():
        raise InvalidArgumentError(
            "X holds NaN or infinite values: re-embed those cells"
        )
    return arr
