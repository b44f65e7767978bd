"""The training loop shared by recforge's models: epochs run in Rust, validation, callbacks,
early stopping on a validation metric with the best weights kept, checkpoints with exact resume,
a tqdm progress bar, and Ctrl-C that stops cleanly."""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from .. import _native
from .._native import Interactions
from ..errors import ConfigError, DataError

log = logging.getLogger("recforge")

#: Early stopping's default: stop once more than this many epochs in a row bring no validation
#: gain (RecBole's default ``stopping_step``).
DEFAULT_PATIENCE = 10

Callback = Callable[[int, dict[str, float]], Any]

#: A learning-rate schedule: ``None`` (constant), a name (``"linear"``, ``"cosine"``, ``"step"``,
#: ``"constant"``) or a dict with ``name`` and options: ``warmup_epochs`` (linear warm-up, may be
#: fractional), ``end`` (final factor of ``linear``/``cosine``, default 0), ``every_epochs`` and
#: ``gamma`` (``step``: multiply the rate by ``gamma`` every ``every_epochs`` epochs).
LrSchedule = str | dict[str, Any] | None


class _BatchBar:
    """The within-epoch progress bar, fed from Rust (``progress(done, total, loss)``)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar = tqdm(total=0, desc=desc, unit="batch", position=1, leave=False, disable=not enabled)

    def __call__(self, done: int, total: int, loss: float) -> None:
        if done <= 1 or self.bar.total != total:
            self.bar.reset(total=total)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _interactions(x: object, name: str) -> Interactions:
    if not isinstance(x, Interactions):
        raise ConfigError(f"{name} must be recforge.Interactions, got {type(x).__name__}")
    return x


def _ids(x: npt.ArrayLike, n: int, what: str) -> npt.NDArray[np.int64]:
    """1-D integer ids of ``what`` ("user" or "item") checked against ``0..n``."""
    a = np.atleast_1d(np.asarray(x))
    if a.ndim != 1 or not (a.dtype.kind in "iu" or (a.size == 0 and a.dtype.kind == "f")):
        raise DataError(f"{what}s must be a 1-D array of integer ids, got dtype {a.dtype} and shape {a.shape}")
    a = a.astype(np.int64)
    bad = a[(a < 0) | (a >= n)]
    if bad.size:
        raise DataError(f"{what} {int(bad[0])} is out of range (n_{what}s = {n})")
    return a


class Recommender(ABC):
    """The contract of every model: ``fit``, ``predict``, ``score_all``, ``recommend``, ``save``
    and ``load(path, device="auto")``."""

    n_users: int
    n_items: int

    @abstractmethod
    def fit(self, train: Interactions, valid: Interactions | None = None) -> "Recommender":
        """Train on ``train`` (validating on ``valid`` where the model validates)."""

    @abstractmethod
    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Scores of (user, item) pairs."""

    @abstractmethod
    def score_all(self, users: npt.ArrayLike) -> torch.Tensor:
        """``[len(users), n_items]`` scores."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the model into folder ``path``."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, device: str = "auto") -> Any:
        """Load a model written by :meth:`save`."""

    @property
    def train_interactions(self) -> Interactions | None:
        """The interactions the model was trained on (kept in its saved folder too)."""
        return None

    def recommend(
        self,
        users: npt.ArrayLike,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Interactions | Sequence[Interactions] | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``k`` items and their scores for each user (``[B, w]`` arrays), best first.

        With ``exclude_seen`` the user's training items are never recommended (a loaded model
        knows them from its folder); ``exclude=`` adds more interactions to skip (e.g. train +
        valid). A model that knows no training interactions and gets no ``exclude`` raises
        rather than return items the user may have seen. When a user has fewer than ``k`` items left, the arrays are only as wide as the
        longest list (``w <= k``) and the rows that are shorter end with item ``-1`` and score
        ``nan``: a seen or excluded item is never returned.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}")
        u = _ids(users, self.n_users, "user")
        parts: list[Interactions] = []
        if exclude is not None:
            parts = [exclude] if isinstance(exclude, Interactions) else list(exclude)
            for j, x in enumerate(parts):
                _interactions(x, f"exclude[{j}]")
                if x.n_items != self.n_items:
                    raise DataError(f"exclude[{j}] has {x.n_items} items but the model has {self.n_items}")
        if exclude_seen:
            seen = self.train_interactions
            if seen is not None:
                parts.append(seen)
            elif exclude is None:
                raise ConfigError(
                    f"{type(self).__name__} does not know the users' seen items (no training interactions): "
                    "pass exclude=<Interactions> or exclude_seen=False"
                )
        scores = self.score_all(u).float().cpu().clone()
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        for x in parts:
            indptr, indices = x.indptr, x.indices
            ok = u < x.n_users
            uu = u[ok]
            counts = (indptr[uu + 1] - indptr[uu]).astype(np.int64)
            rows = np.repeat(np.nonzero(ok)[0], counts)
            # Positions of every row's items in `indices`, without a loop over users.
            starts = indptr[uu].astype(np.int64) - (np.cumsum(counts) - counts)
            cols = indices[np.repeat(starts, counts) + np.arange(int(counts.sum()))]
            mask[torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))] = True
        left = (~mask).sum(dim=1)
        width = int(min(k, int(left.max()) if len(u) else k))
        scores[mask] = -torch.inf
        top = torch.topk(scores, width, dim=1) if width > 0 else None
        if top is None:
            return np.zeros((len(u), 0), dtype=np.int64), np.zeros((len(u), 0), dtype=np.float32)
        items = top.indices.numpy().astype(np.int64)
        values = top.values.numpy().astype(np.float32)
        short = np.arange(width)[None, :] >= left.numpy()[:, None]
        items[short] = -1
        values[short] = np.nan
        return items, values


class TorchModel(Recommender):
    """A model trained by recforge's generic trainer in the Rust core (``self._native``).

    Subclasses give their constructor's arguments to :meth:`_init_spec`; the spec is validated
    once, in Rust, saved as the checkpoint's config and shown by ``repr``.
    """

    #: validation metric monitored by default, and whether larger is better
    monitor: str = "ndcg@10"
    higher_is_better: bool = True
    # Spec values every model has (set from the validated spec by _init_spec).
    epochs: int
    batch_size: int
    lr: float
    reg: float
    seed: int

    def _spec_set(self) -> None:
        """Called once the spec is set (at construction and at load)."""

    def _init_spec(self, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if k not in ("self", "__class__", "kwargs")}
        device = values.pop("device", "auto")
        spec = {"model": type(self).__name__, **values}
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{type(self).__name__}: {key} must be a finite number, got {value}")
        try:
            text = json.dumps(spec, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{type(self).__name__}: arguments must be plain numbers, strings, lists or dicts ({e})") from e
        self._spec: dict[str, Any] = json.loads(_native._Trainer.check_spec(text))
        for key, value in self._spec.items():
            if key != "model":
                setattr(self, key, value)
        self.device = _native.resolve_device(device)
        self._native: Any = None
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.interrupted = False
        self._spec_set()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def config(self) -> dict[str, Any]:
        """The spec (constructor arguments), as saved in checkpoints."""
        return {k: v for k, v in self._spec.items() if k != "model"}

    def _features(self, n_users: int, n_items: int, **data: Any) -> Any:
        """Data-dependent inputs of the native model (an FM's side features)."""
        return None

    def fit(  # type: ignore[override]
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        patience: int | None = DEFAULT_PATIENCE,
        progress: bool = True,
    ) -> "TorchModel":
        """Train on ``train`` from a fresh initialisation; with ``valid``, evaluate each epoch (``self.monitor``), keep the best
        weights and stop once more than ``patience`` epochs in a row bring no improvement (RecBole's
        ``stopping_step`` rule; default 10, as RecBole's; ``patience=None`` trains every epoch).
        Without ``valid`` every epoch is trained.

        ``callbacks`` are called as ``cb(epoch, logs)`` after each epoch (``logs`` holds the loss and
        validation metrics); an exception raised there (e.g. ``optuna.TrialPruned``) stops training
        and propagates. With ``checkpoint_dir`` the state after every epoch is written to
        ``checkpoint_dir/last`` (and the best one to ``checkpoint_dir/best``); ``resume=True``
        continues from ``last`` exactly where it stopped. Ctrl-C stops between batches, keeps the
        best weights and returns (``self.interrupted`` is then True).
        """
        return self._fit(train, valid, epochs=epochs, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
                         resume=resume, patience=patience, progress=progress, features=None)  # fmt: skip

    def _fit(
        self,
        train: Interactions,
        valid: Interactions | None,
        *,
        epochs: int | None,
        callbacks: Sequence[Callback],
        checkpoint_dir: str | Path | None,
        resume: bool,
        patience: int | None,
        progress: bool,
        features: Any,
        items: Any = None,
    ) -> "TorchModel":
        train = _interactions(train, "train")
        if valid is not None:
            valid = _interactions(valid, "valid")
        for name, v in (("epochs", epochs), ("patience", patience)):
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if name == "epochs" else 0)):
                raise ConfigError(f"{name} must be a {'positive' if name == 'epochs' else 'non-negative'} integer, got {v!r}")
        cbs = list(callbacks)
        if not all(callable(cb) for cb in cbs):
            raise ConfigError("callbacks must be callables cb(epoch, logs)")
        self.n_users, self.n_items = train.n_users, train.n_items
        extra = {} if items is None else {"items": items}
        native = _native._Trainer(json.dumps(self._spec), train.n_users, train.n_items, self.device, features, **extra)
        self._native = native
        total = self.epochs if epochs is None else int(epochs)
        bar = tqdm(total=total, desc=type(self).__name__, unit="epoch", disable=not progress, leave=False)
        batch_bar = _BatchBar(progress, type(self).__name__)

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix({k: round(v, 4) for k, v in logs.items() if k != "epoch"})
            for cb in cbs:
                cb(epoch, logs)

        try:
            interrupted = native.fit(
                train, valid, epochs=total, patience=patience,
                checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
                resume=resume, on_batch=batch_bar if progress else None, on_epoch=on_epoch,
            )  # fmt: skip
        finally:
            batch_bar.close()
            bar.close()
            self.history = native.history
            self.best_epoch = native.best_epoch
        self.interrupted = bool(interrupted)
        if self.interrupted:
            log.warning("training interrupted at epoch %d; keeping the best weights", len(self.history))
        return self

    @property
    def current_lr(self) -> float:
        """The learning rate the next optimiser step will use (after the schedule)."""
        return float(self._require_fit().lr)

    @property
    def train_interactions(self) -> Interactions | None:
        return None if self._native is None else self._native.train

    def _require_fit(self) -> Any:
        if self._native is None:
            raise ConfigError(f"{type(self).__name__} is not fitted yet: call fit() or load()")
        return self._native

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Scores of (user, item) pairs (predicted ratings for rating models)."""
        return self._require_fit().predict(np.asarray(users), np.asarray(items))

    def score_all(self, users: npt.ArrayLike) -> torch.Tensor:
        """``[len(users), n_items]`` scores as a torch tensor on the model's device."""
        return self._require_fit().score_all(np.atleast_1d(np.asarray(users)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the parameters and buffers, by readable names."""
        return self._require_fit().state_dict()

    def save(self, path: str | Path) -> None:
        """Write the model into folder ``path``: weights, optimiser state and training
        interactions (safetensors, checksummed) and ``state.json`` (spec and history)."""
        self._require_fit().save(str(path))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Any:
        """Load a model written by :meth:`save` (or a checkpoint folder) onto ``device``."""
        native = _native._Trainer.load(str(path), device, cls.__name__)
        spec = json.loads(native.spec)
        spec.pop("model", None)
        # The saved spec is complete (every key the trainer knows), so it is applied as it is
        # rather than through the constructor's narrower signature.
        model = cls.__new__(cls)
        model._init_spec({**spec, "device": device})
        model._native = native
        model.n_users, model.n_items = native.sizes
        model.history = native.history
        model.best_epoch = native.best_epoch
        return model


class FactorModel(TorchModel):
    """A TorchModel with the hyperparameters every factor model shares (kept for subclasses)."""
