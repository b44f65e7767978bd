"""The main job (`recforge demo`) end to end, as the README's `make demo` runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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


class _Stop(Exception):
    """Raised by the stand-in for run_s5: the config reached it, nothing else runs."""


def _s5_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str) -> Any:
    """The S5Config that `recforge keywords FLAGS` hands to run_s5 (the pipeline itself is not run)."""
    import recforge.pipelines
    from recforge import cli

    seen: list[object] = []

    def fake_run_s5(cfg: object, **_: object) -> None:
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(recforge.pipelines, "run_s5", fake_run_s5)
    with pytest.raises(_Stop):
        cli.main(["keywords", "--run-dir", str(tmp_path / "run"), "--no-progress", *flags])
    assert len(seen) == 1
    return seen[0]


def test_keywords_penalty_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from recforge.pipelines import S5Config

    cfg = _s5_config(monkeypatch, tmp_path, "--presence-penalty", "-1.5", "--frequency-penalty", "2")
    assert isinstance(cfg, S5Config)
    assert (cfg.presence_penalty, cfg.frequency_penalty) == (-1.5, 2.0)
    # zero is allowed (no penalty sent to the server)
    cfg = _s5_config(monkeypatch, tmp_path, "--presence-penalty", "0", "--frequency-penalty", "0")
    assert (cfg.presence_penalty, cfg.frequency_penalty) == (0.0, 0.0)


def test_keywords_penalty_defaults_are_s5configs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from recforge.pipelines import S5Config

    cfg = _s5_config(monkeypatch, tmp_path)
    assert (cfg.presence_penalty, cfg.frequency_penalty) == (S5Config().presence_penalty, S5Config().frequency_penalty)
    assert (cfg.presence_penalty, cfg.frequency_penalty) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--presence-penalty", "3.0", "presence_penalty"),
        ("--frequency-penalty", "-2.5", "frequency_penalty"),
        ("--presence-penalty", "nan", "presence_penalty"),
        ("--frequency-penalty", "inf", "frequency_penalty"),
    ],
)
def test_keywords_penalty_out_of_range_is_a_clean_error(
    flag: str, value: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recforge import cli

    assert cli.main(["keywords", "--run-dir", str(tmp_path / "run"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recforge: error: ") and f"S5Config.{field}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_keywords_penalty_not_a_number_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    from recforge import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["keywords", "--presence-penalty", "high"])
    assert e.value.code == 2
    assert "--presence-penalty: invalid float value: 'high'" in capsys.readouterr().err


def test_keywords_help_names_the_penalty_range(capsys: pytest.CaptureFixture[str]) -> None:
    from recforge import cli

    with pytest.raises(SystemExit):
        cli.main(["keywords", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--presence-penalty" in out and "--frequency-penalty" in out
    assert "OpenAI presence penalty, -2..2 (default 1.0)" in out
    assert "OpenAI frequency penalty, -2..2 (default 0.5)" in out
