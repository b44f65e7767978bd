"""The training loop shared by recforge's models: epochs run in Rust, validation, callbacks,
early stopping on a validation metric with the best weights kept, checkpoints with exact resume,
a tqdm progress bar, and Ctrl-C that stops cleanly."""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from .. import _native
from .._native import Interactions
from ..errors import ConfigError, DataError

log = logging.getLogger("recforge")

Callback = Callable[[int, dict[str, float]], Any]

#: A learning-rate schedule: ``None`` (constant), a name (``"linear"``, ``"cosine"``, ``"step"``,
#: ``"constant"``) or a dict with ``name`` and options: ``warmup_epochs`` (linear warm-up, may be
#: fractional), ``end`` (final factor of ``linear``/``cosine``, default 0), ``every_epochs`` and
#: ``gamma`` (``step``: multiply the rate by ``gamma`` every ``every_epochs`` epochs).
LrSchedule = str | dict[str, Any] | None

_SCHEDULE_KEYS = {"name", "warmup_epochs", "end", "every_epochs", "gamma"}


def _check_schedule(schedule: LrSchedule) -> LrSchedule:
    if schedule is None:
        return None
    spec = {"name": schedule} if isinstance(schedule, str) else schedule
    if not isinstance(spec, dict) or spec.get("name") not in ("constant", "linear", "cosine", "step"):
        raise ConfigError(
            f"lr_schedule must be None, 'constant', 'linear', 'cosine', 'step' or a dict with one of them as 'name', got {schedule!r}"
        )
    unknown = set(spec) - _SCHEDULE_KEYS
    if unknown:
        raise ConfigError(f"lr_schedule has unknown keys {sorted(unknown)}; known: {sorted(_SCHEDULE_KEYS)}")
    for key in ("warmup_epochs", "end", "every_epochs", "gamma"):
        v = spec.get(key, 0)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"lr_schedule[{key!r}] must be a non-negative number, got {v!r}")
    if spec["name"] == "step" and not float(spec.get("every_epochs", 1)) > 0:
        raise ConfigError("lr_schedule 'step' needs every_epochs > 0")
    return dict(spec)


class _BatchBar:
    """The within-epoch progress bar, fed from Rust (``progress(done, total, loss)``)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar = tqdm(total=0, desc=desc, unit="batch", position=1, leave=False, disable=not enabled)

    def start(self, epoch: int) -> None:
        self.bar.reset(total=0)
        self.bar.set_description(f"epoch {epoch}")

    def __call__(self, done: int, total: int, loss: float) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _interactions(x: object, name: str) -> Interactions:
    if not isinstance(x, Interactions):
        raise ConfigError(f"{name} must be recforge.Interactions, got {type(x).__name__}")
    return x


class Recommender(ABC):
    """Common API: ``fit``, ``predict``, ``score_all``, ``recommend``, ``save`` / ``load``."""

    n_users: int
    n_items: int
    _train: Interactions | None = None

    @abstractmethod
    def score_all(self, users: npt.ArrayLike) -> torch.Tensor:
        """``[len(users), n_items]`` scores."""

    def recommend(
        self, users: npt.ArrayLike, k: int = 10, exclude_seen: bool = True
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``k`` items and their scores for each user (``[B, k]`` arrays), skipping the
        user's training items when ``exclude_seen``."""
        u = np.atleast_1d(np.asarray(users, dtype=np.int64))
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        scores = self.score_all(u).float().cpu().clone()
        if exclude_seen and self._train is not None:
            indptr, indices = self._train.indptr, self._train.indices
            rows = np.repeat(np.arange(len(u)), indptr[u + 1] - indptr[u])
            cols = np.concatenate([indices[indptr[x] : indptr[x + 1]] for x in u]) if len(u) else rows
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        return top.indices.numpy().astype(np.int64), top.values.numpy()


class TorchModel(Recommender):
    """A model whose parameters and optimiser live in the Rust core (``self._native``)."""

    #: validation metric monitored by default, and whether larger is better
    monitor: str = "ndcg@10"
    higher_is_better: bool = True
    #: config entries that :meth:`load` sets as attributes instead of passing to the constructor
    data_attributes: tuple[str, ...] = ()

    def __init__(self, *, epochs: int, batch_size: int, seed: int, device: str) -> None:
        if epochs < 1 or batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if seed < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = _native.resolve_device(device)
        self._native: Any = None
        self.lr_schedule: LrSchedule = None
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.interrupted = False

    @staticmethod
    def _check_hparams(dim: int, lr: float, reg: float, optimizer: str) -> None:
        """Fail at construction, not at the first fit, on values no model accepts."""
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"lr must be a positive number, got {lr}")
        if not (reg >= 0 and math.isfinite(reg)):
            raise ConfigError(f"reg must be a non-negative number, got {reg}")
        if optimizer.lower() not in ("adam", "adamw", "sgd", "adagrad"):
            raise ConfigError(f"optimizer must be adam, adamw, sgd or adagrad, got {optimizer!r}")

    # Subclasses: build the native model, evaluate on validation data, report their config.
    @abstractmethod
    def _build(self, n_users: int, n_items: int) -> Any:
        """The native model for this many users and items."""

    @abstractmethod
    def _validate(self, valid: Interactions) -> dict[str, float]:
        """Validation metrics (must include ``self.monitor``)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments, as saved in checkpoints."""

    def _better(self, a: float, b: float | None) -> bool:
        if b is None or math.isnan(b):
            return True
        return a > b if self.higher_is_better else a < b

    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        patience: int | None = None,
        progress: bool = True,
    ) -> "TorchModel":
        """Train on ``train`` from a fresh initialisation; with ``valid``, evaluate each epoch (``self.monitor``), keep the best
        weights and stop after ``patience`` epochs without improvement.

        ``callbacks`` are called as ``cb(epoch, logs)`` after each epoch (``logs`` holds the loss and
        validation metrics); an exception raised there (e.g. ``optuna.TrialPruned``) stops training
        and propagates. With ``checkpoint_dir`` the state after every epoch is written to
        ``checkpoint_dir/last`` (and the best one to ``checkpoint_dir/best``); ``resume=True``
        continues from ``last`` exactly where it stopped. Ctrl-C stops between batches, keeps the
        best weights and returns (``self.interrupted`` is then True).
        """
        train = _interactions(train, "train")
        if valid is not None:
            valid = _interactions(valid, "valid")
            if (valid.n_users, valid.n_items) != (train.n_users, train.n_items):
                raise DataError("train and valid must share one id space")
        total = self.epochs if epochs is None else int(epochs)
        # fit() trains from scratch (same seed, same result); resume=True continues a checkpoint.
        self.n_users, self.n_items = train.n_users, train.n_items
        self._native = self._build(train.n_users, train.n_items)
        self.history, self.best_epoch = [], None
        self._train = train
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        start, best_value, best_state = 0, None, None
        if resume:
            if ckpt is None or not (ckpt / "last" / "state.json").is_file():
                raise ConfigError("resume=True needs a checkpoint_dir holding a 'last' checkpoint")
            if (ckpt / "best" / "state.json").is_file():
                self._native.load(str(ckpt / "best"))
                best_state = self._native.state_dict()
            state = json.loads(self._native.load(str(ckpt / "last")))
            start = state["epoch"] + 1
            self.history = state["history"]
            self.best_epoch, best_value = state["best_epoch"], state["best_value"]
        batches = self._native.set_train(train)
        self._set_schedule(batches, total)
        self.interrupted = False
        since_best = 0
        bar = tqdm(range(start, total), desc=type(self).__name__, unit="epoch", disable=not progress, leave=False)
        batch_bar = _BatchBar(progress, type(self).__name__)
        try:
            for epoch in bar:
                batch_bar.start(epoch)
                loss, _batches, interrupted = self._native.train_epoch(epoch, batch_bar if progress else None)
                if interrupted:
                    self.interrupted = True
                    log.warning("training interrupted at epoch %d; keeping the best weights", epoch)
                    break
                logs: dict[str, float] = {"epoch": epoch, "loss": loss, "lr": float(self._native.lr)}
                if valid is not None:
                    logs.update(self._validate(valid))
                    value = logs[self.monitor]
                    if self._better(value, best_value):
                        best_value, self.best_epoch, since_best = value, epoch, 0
                        best_state = self._native.state_dict()
                        if ckpt is not None:
                            self._save_checkpoint(ckpt / "best", epoch, best_value)
                    else:
                        since_best += 1
                self.history.append(logs)
                if ckpt is not None:
                    self._save_checkpoint(ckpt / "last", epoch, best_value)
                bar.set_postfix({k: round(v, 4) for k, v in logs.items() if k != "epoch"})
                for cb in callbacks:
                    cb(epoch, logs)
                if patience is not None and valid is not None and since_best > patience:
                    break
        finally:
            batch_bar.close()
            bar.close()
            if best_state is not None:
                self._native.load_state_dict(best_state)
        return self

    def _set_schedule(self, batches_per_epoch: int, epochs: int) -> None:
        spec = _check_schedule(self.lr_schedule)
        if spec is None:
            return
        assert isinstance(spec, dict)
        self._native.set_schedule(
            spec["name"],
            warmup=round(float(spec.get("warmup_epochs", 0)) * batches_per_epoch),
            total=epochs * batches_per_epoch,
            end=float(spec.get("end", 0.0)),
            every=max(1, round(float(spec.get("every_epochs", 1)) * batches_per_epoch)),
            gamma=float(spec.get("gamma", 0.1)),
        )

    @property
    def current_lr(self) -> float:
        """The learning rate the next optimiser step will use (after the schedule)."""
        return float(self._require_fit().lr)

    def _save_checkpoint(self, path: Path, epoch: int, best_value: float | None) -> None:
        state = {
            "model": type(self).__name__,
            "config": self.config(),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "epoch": epoch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_value": best_value,
        }
        self._native.save(str(path), json.dumps(state))

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
        """Copies of the parameters, by Hugging-Face-style names."""
        return self._require_fit().state_dict()

    def save(self, path: str | Path) -> None:
        """Write the model (weights as safetensors + JSON config) into folder ``path``."""
        self._save_checkpoint(Path(path), len(self.history) - 1, None)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Any:
        """Load a model written by :meth:`save` (or a checkpoint folder)."""
        p = Path(path)
        if not (p / "state.json").is_file():
            raise DataError(f"{p}: not a recforge model folder (no state.json)")
        state = json.loads((p / "state.json").read_text())
        if state.get("model") != cls.__name__:
            raise DataError(f"{p} holds a {state.get('model')}, not a {cls.__name__}")
        config = dict(state["config"])
        # Data-dependent settings (e.g. an FM's side features) are attributes, not arguments.
        data = {k: config.pop(k) for k in cls.data_attributes if k in config}
        model = cls(**config, device=device)
        for k, v in data.items():
            setattr(model, k, v)
        model.n_users, model.n_items = state["n_users"], state["n_items"]
        model._native = model._build(model.n_users, model.n_items)
        model._native.load(str(p))
        model.history = state["history"]
        return model




class FactorModel(TorchModel):
    """A TorchModel with the hyperparameters every factor model shares; subclasses keep explicit
    constructor signatures (their defaults) and hand them to :meth:`_set_hparams`."""

    _common = ("dim", "epochs", "batch_size", "lr", "reg", "optimizer", "weight_decay",
               "clip_grad_norm", "init_std", "seed", "lr_schedule")  # fmt: skip
    #: further constructor arguments a subclass saves in its config
    _extra: tuple[str, ...] = ()

    def _set_hparams(self, values: dict[str, Any]) -> None:
        TorchModel.__init__(
            self, epochs=values["epochs"], batch_size=values["batch_size"],
            seed=values["seed"], device=values["device"],
        )  # fmt: skip
        self._check_hparams(values["dim"], values["lr"], values["reg"], values["optimizer"])
        self.dim, self.lr, self.reg = int(values["dim"]), float(values["lr"]), float(values["reg"])
        self.optimizer = values["optimizer"]
        self.weight_decay = float(values["weight_decay"])
        self.clip_grad_norm = float(values["clip_grad_norm"])
        self.init_std = float(values["init_std"])
        self.lr_schedule = _check_schedule(values.get("lr_schedule"))

    def config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._common + self._extra}


def rmse_logs(model: TorchModel, valid: Interactions) -> dict[str, float]:
    """Validation RMSE of a rating model."""
    a = valid.to_arrays()
    if a["ratings"] is None:
        raise ConfigError("validation interactions need ratings")
    pred = model.predict(a["users"], a["items"])
    return {"rmse": float(np.sqrt(np.mean((pred - a["ratings"]) ** 2)))}


def ranking_logs(model: TorchModel, valid: Interactions) -> dict[str, float]:
    """Validation full-ranking NDCG@10 and Hit@10 with the training items masked."""
    from .. import metrics

    assert model._train is not None
    r = metrics.full_ranking(model.score_all, valid, [model._train], ks=(10,), metrics=("ndcg", "hit"))
    return {"ndcg@10": r["ndcg@10"], "hit@10": r["hit@10"]}
