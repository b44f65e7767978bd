"""The main job (`recforge demo`) end to end, as the README's `make demo` runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_demo_on_builtin_data() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "recforge", "demo"], capture_output=True, text=True, check=True
    ).stdout
    assert "users 610  items 9,742 (9,724 rated)  interactions 100,836" in out
    assert "5-core: 610 users, 3,650 items, 90,274 interactions" in out
    assert "leave-one-out (time)   train    89,054  valid      610  test      610" in out


def test_demo_bad_path_is_a_clean_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "recforge", "demo", "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "recforge: error:" in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_llm_demo_with_the_real_small_model(capsys: pytest.CaptureFixture[str]) -> None:
    from recforge import cli

    assert cli.main(["llm-demo", "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "descriptions" in out and "re-ranked candidates of user 0" in out and "'requests': 3" in out
