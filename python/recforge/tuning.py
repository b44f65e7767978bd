"""Optuna integration: report each epoch's validation metric to a trial and prune when Optuna
says so. Optuna is optional (``pip install optuna``); any storage works (in-memory, SQLite,
journal file, PostgreSQL URL), so one study can run across processes and machines.

Example::

    import optuna, recforge
    ds = recforge.datasets.movielens_small()
    train, valid, test = recforge.split.leave_one_out(ds.interactions)

    def objective(trial):
        model = recforge.models.BPRMF(dim=trial.suggest_categorical("dim", [32, 64]),
                                      lr=trial.suggest_float("lr", 1e-3, 1e-2, log=True), epochs=20)
        model.fit(train, valid, callbacks=[recforge.tuning.optuna_callback(trial, "ndcg@10")])
        return model.history[model.best_epoch]["ndcg@10"]

    study = optuna.create_study(direction="maximize", storage="sqlite:///study.db",
                                study_name="bprmf", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=3))
    study.optimize(objective, n_trials=20)
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .errors import ConfigError


def optuna_callback(trial: Any, metric: str = "ndcg@10") -> Callable[[int, dict[str, float]], None]:
    """A training callback that reports ``logs[metric]`` to ``trial`` after every epoch and raises
    ``optuna.TrialPruned`` when the study's pruner asks for it. The model keeps its best weights
    when training stops this way."""
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("recforge.tuning needs optuna: pip install optuna") from e

    def callback(epoch: int, logs: dict[str, float]) -> None:
        if metric not in logs:
            raise ConfigError(
                f"metric {metric!r} is not among the epoch's logs {sorted(logs)}; pass valid= to fit()"
            )
        value = float(logs[metric])
        if math.isnan(value):
            raise optuna.TrialPruned(f"{metric} is NaN at epoch {epoch}")
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {metric} = {value:.5f}")

    return callback


__all__ = ["optuna_callback"]
