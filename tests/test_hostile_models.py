"""Hostile input to recforge.models: crashes at every file-system step of a checkpoint write, and
corrupt model folders. Each case gets a typed error or a consistent model, never a wrong one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import recforge
from recforge import models
from recforge.errors import DataError, RecforgeError

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import recforge
    from recforge import models
    train = recforge.split.ratio(recforge.datasets.movielens_small().interactions, (0.8, 0.1, 0.1), seed=0)[0]
    ckpt = sys.argv[1]
    models.SVD(epochs=1, batch_size=4096, device="cpu").fit(train, checkpoint_dir=ckpt, progress=False)
    os.environ["RECFORGE_TEST_CRASH_AT"] = sys.argv[2]
    models.SVD(epochs=2, batch_size=4096, device="cpu").fit(train, checkpoint_dir=ckpt, resume=True, progress=False)
    print("finished")
    """
)


@pytest.fixture(scope="module")
def train() -> recforge.Interactions:
    return recforge.split.ratio(recforge.datasets.movielens_small().interactions, (0.8, 0.1, 0.1), seed=0)[0]


@pytest.fixture(scope="module")
def references(train) -> dict[int, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    return {e: models.SVD(epochs=e, batch_size=4096, device="cpu").fit(train, progress=False).state_dict() for e in (1, 2)}


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_a_kill_at_any_step_of_a_checkpoint_write_leaves_a_consistent_pair(step, tmp_path, train, references) -> None:  # type: ignore[no-untyped-def]
    # Defect (#13.5): a kill between the weights and state renames paired epoch-1 weights with
    # the epoch-0 state, which load() accepted and resume continued wrongly.
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), str(step)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "finished" not in r.stdout, r.stderr[-2000:]
    last = tmp_path / "ckpt" / "last"
    model = models.SVD.load(last, device="cpu")
    epochs = len(model.history)
    assert epochs in (1, 2)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, references[epochs][k], atol=1e-6), (step, epochs, k)
    resumed = models.SVD(epochs=2, batch_size=4096, device="cpu").fit(train, checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False)
    for k, v in resumed.state_dict().items():
        assert torch.allclose(v, references[2][k], atol=1e-6), (step, k)


def _saved(tmp_path: Path, train: recforge.Interactions) -> Path:
    p = tmp_path / "svd"
    models.SVD(dim=4, epochs=1, device="cpu").fit(train, progress=False).save(p)
    return p


def _weights(p: Path) -> Path:
    (w,) = p.glob("weights-*.safetensors")
    return w


CORRUPT_STATES = {
    "not json": b"{epoch: 1",
    "not utf-8": b'{"model": "SVD\xff"}',
    "a list": b"[1, 2]",
    "no config": b'{"model": "SVD", "n_users": 3, "n_items": 3, "history": []}',
    "bad sizes": None,  # filled below from the real state
    "bad history": None,
    "bad config": None,
    "weights path escapes": None,
}


@pytest.mark.parametrize("case", sorted(CORRUPT_STATES))
def test_corrupt_state_json_is_a_data_error(case, tmp_path, train) -> None:  # type: ignore[no-untyped-def]
    # Defect (#13.10): a corrupt state.json raised JSONDecodeError, KeyError, TypeError or
    # UnicodeDecodeError.
    p = _saved(tmp_path, train)
    state = json.loads((p / "state.json").read_text())
    raw = CORRUPT_STATES[case]
    if case == "bad sizes":
        state["n_users"] = -4
    elif case == "bad history":
        state["history"] = [{"epoch": "zero"}]
    elif case == "bad config":
        state["config"]["dim"] = "four"
    elif case == "weights path escapes":
        state["weights"] = "../../etc/passwd"
    if raw is None:
        raw = json.dumps(state).encode()
    (p / "state.json").write_bytes(raw)
    with pytest.raises(DataError):
        models.SVD.load(p, device="cpu")


def test_damaged_or_missing_weights_are_data_errors(tmp_path, train) -> None:  # type: ignore[no-untyped-def]
    # Defect (#13.11): a bit-flipped weight loaded without complaint.
    p = _saved(tmp_path, train)
    w = _weights(p)
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x10
    w.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        models.SVD.load(p, device="cpu")
    w.write_bytes(bytes(data[:100]))
    with pytest.raises(DataError):
        models.SVD.load(p, device="cpu")
    w.unlink()
    with pytest.raises(DataError, match="no weights"):
        models.SVD.load(p, device="cpu")


def test_every_model_error_is_typed(tmp_path, train) -> None:  # type: ignore[no-untyped-def]
    m = models.BPRMF(dim=4, epochs=1, device="cpu").fit(train, progress=False)
    cases = [
        lambda: m.predict([0], [train.n_items]),
        lambda: m.predict([-1], [0]),
        lambda: m.predict([0, 1], [0]),
        lambda: m.predict([0.5], [1]),
        lambda: m.score_all([train.n_users]),
        lambda: m.recommend([0], k=-1),
        lambda: m.fit("not interactions"),  # type: ignore[arg-type]
        lambda: m.fit(train, patience=-1),
        lambda: models.SVD(seed=2**70),
        lambda: models.SVD(seed=-1),
        lambda: models.SVD(lr=float("inf")),
        lambda: models.SASRec(max_len=0),
        lambda: models.SVD.load(tmp_path / "nothing"),
    ]
    for j, case in enumerate(cases):
        with pytest.raises(RecforgeError):
            case()
        assert np.isfinite(m.predict([0], [0])).all(), j
