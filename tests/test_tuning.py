"""recforge.tuning with real Optuna studies: pruning through the training callback, and one study
shared by two worker processes through file-based storage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import recforge
from recforge import models, tuning
from recforge.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def loo() -> recforge.split.SplitResult:
    return recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)


def test_callback_reports_every_epoch_and_prunes(loo) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    trial = study.ask()
    model = models.BPRMF(epochs=5, dim=16)
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0"):
        model.fit(train, valid, callbacks=[tuning.optuna_callback(trial, "ndcg@10")], progress=False)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values.keys() == {0}
    assert len(model.history) == 1  # stopped after the first epoch, best weights kept

    study = optuna.create_study(direction="maximize")  # no pruning: every epoch reported
    trial = study.ask()
    model.fit(train, valid, epochs=3, callbacks=[tuning.optuna_callback(trial)], progress=False)
    reported = trial.storage.get_trial(trial._trial_id).intermediate_values
    assert sorted(reported) == [0, 1, 2]
    assert reported[2] == pytest.approx(model.history[2]["ndcg@10"])
    with pytest.raises(ConfigError, match="not among the epoch's logs"):
        models.BPRMF(epochs=1).fit(train, callbacks=[tuning.optuna_callback(trial)], progress=False)


WORKER = """
import sys, optuna, recforge
optuna.logging.set_verbosity(optuna.logging.WARNING)
from optuna.storages.journal import JournalFileBackend
storage = optuna.storages.JournalStorage(JournalFileBackend(sys.argv[1]))
study = optuna.load_study(study_name="svd", storage=storage)
train, valid, _ = recforge.split.ratio(recforge.datasets.movielens_small().interactions, (0.8, 0.1, 0.1), seed=0)
def objective(trial):
    m = recforge.models.SVD(dim=trial.suggest_categorical("dim", [8, 16]),
                            lr=trial.suggest_float("lr", 1e-3, 2e-2, log=True), epochs=4, batch_size=4096)
    m.fit(train, valid, callbacks=[recforge.tuning.optuna_callback(trial, "rmse")], progress=False)
    return m.history[m.best_epoch]["rmse"]
study.optimize(objective, n_trials=3)
"""


def test_two_worker_processes_share_one_study(tmp_path: Path) -> None:
    from optuna.storages.journal import JournalFileBackend

    path = str(tmp_path / "journal.log")
    storage = optuna.storages.JournalStorage(JournalFileBackend(path))
    optuna.create_study(
        study_name="svd", storage=storage, direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    )  # fmt: skip
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, path], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="svd", storage=optuna.storages.JournalStorage(JournalFileBackend(path)))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6 and len({t.number for t in trials}) == 6  # every trial recorded once
    states = {t.state for t in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert 0.8 < study.best_value < 1.0
