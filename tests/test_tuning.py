"""recforge.tuning with real Optuna studies: pruning through the training callback, and one study
shared by two worker processes through a journal file and through a private PostgreSQL server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
kind, target = sys.argv[1:3]
if kind == "journal":
    from optuna.storages.journal import JournalFileBackend
    storage = optuna.storages.JournalStorage(JournalFileBackend(target))
else:
    storage = optuna.storages.RDBStorage(target)
study = optuna.load_study(study_name="svd", storage=storage)
train, valid, _ = recforge.split.ratio(recforge.datasets.movielens_small().interactions, (0.8, 0.1, 0.1), seed=0)
def objective(trial):
    m = recforge.models.SVD(dim=trial.suggest_categorical("dim", [8, 16]),
                            lr=trial.suggest_float("lr", 1e-3, 2e-2, log=True), epochs=4, batch_size=4096)
    m.fit(train, valid, callbacks=[recforge.tuning.optuna_callback(trial, "rmse")], progress=False)
    return m.history[m.best_epoch]["rmse"]
study.optimize(objective, n_trials=3)
"""


def _postgres_bindir() -> Path:
    """The folder with ``initdb`` and ``pg_ctl``: ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian installs the server binaries there, off ``PATH``)."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")  # newest first
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)[::-1]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found via `pg_config --bindir` or in "
        "/usr/lib/postgresql/*/bin: install Debian's `postgresql` package (`.ci/dev setup` does)",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server on 127.0.0.1 (free port, socket in its own temporary folder,
    trust authentication), stopped and deleted at teardown. initdb refuses to run as root, so as
    root the server runs as Debian's ``postgres`` user."""
    bindir = _postgres_bindir()
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="recforge-pg-"))  # not under pytest's 0700 root-only tmp
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.fail("running as root, and no `postgres` user to run the server as", pytrace=False)
        shutil.chown(root, user="postgres", group="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", _free_port()

    def pg(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*as_user, str(bindir / args[0]), *args[1:]]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, check=False)

    def check(r: subprocess.CompletedProcess[str]) -> None:
        if r.returncode != 0:
            server_log = log.read_text(errors="replace") if log.is_file() else ""
            pytest.fail(f"{' '.join(r.args)} failed:\n{r.stdout}{r.stderr}{server_log}", pytrace=False)

    try:
        check(pg("initdb", "-D", str(data), "-U", "recforge", "--auth=trust", "-E", "UTF8", "--no-locale"))
        with open(data / "postgresql.conf", "a") as conf:  # root can append to postgres' file
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n")
            conf.write(f"unix_socket_directories = '{root}'\n")
        check(pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"))
        check(pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "recforge", "optuna"))
        yield f"postgresql+psycopg2://recforge@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_worker_processes_share_one_study(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from optuna.storages.journal import JournalFileBackend

    target = str(tmp_path / "journal.log") if kind == "journal" else request.getfixturevalue("postgres_url")
    opened: list[optuna.storages.RDBStorage] = []

    def open_storage() -> optuna.storages.BaseStorage:
        if kind == "journal":
            return optuna.storages.JournalStorage(JournalFileBackend(target))
        opened.append(optuna.storages.RDBStorage(target))
        return opened[-1]

    try:
        optuna.create_study(
            study_name="svd", storage=open_storage(), direction="minimize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
        )  # fmt: skip
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER, kind, target], stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        for w in workers:
            _, err = w.communicate(timeout=600)
            assert w.returncode == 0, err
        study = optuna.load_study(study_name="svd", storage=open_storage())  # a fresh connection
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == 6 and len({t.number for t in trials}) == 6  # every trial recorded once
        states = {t.state for t in trials}
        assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
        assert 0.8 < study.best_value < 1.0
    finally:
        for s in opened:
            s.engine.dispose()  # close pooled connections before the server stops
