"""Every notebooks/*.ipynb runs top to bottom in a real Jupyter kernel (nbclient + the venv's
ipykernel) on its small setting, and is committed executed: its code cells were run in order and
hold outputs, none of them an error.

The kernel is started exactly as ``.ci/execute-notebooks`` (the command that regenerates the
committed outputs) starts it, through that script's own functions: a ``python3`` kernel spec
running this interpreter in a temporary Jupyter folder (nothing under the home folder is used),
``RECFORGE_NOTEBOOK_SMALL=1`` for the notebooks' parameters cells, a scratch working directory, no
LLM server from the environment and no network."""

from __future__ import annotations

import importlib.util
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runner() -> ModuleType:
    """``.ci/execute-notebooks`` imported as a module (its name has no ``.py``)."""
    path = ROOT / ".ci" / "execute-notebooks"
    loader = SourceFileLoader("execute_notebooks", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


RUNNER = _runner()
NOTEBOOKS: list[Path] = RUNNER.notebook_paths()
#: Seconds one cell may run in the test.
CELL_TIMEOUT = 600


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The kernel's environment: a private Jupyter/IPython folder with a ``python3`` kernel spec
    for this interpreter, the small setting, offline, and the in-process default LLM."""
    folder = tmp_path_factory.mktemp("jupyter")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in RUNNER.sandbox_env(folder).items():
            mp.setenv(name, value)
        mp.setenv(RUNNER.SMALL_ENV, "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("RECFORGE_LLM_BASE_URL", raising=False)
        yield folder


def _code_cells(nb: Any) -> list[tuple[int, Any]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS
    assert all(p.parent == ROOT / "notebooks" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed(path: Path) -> None:
    """The file holds one top-to-bottom run: execution counts 1, 2, 3, ... over its code cells,
    outputs, no error output, and the standard ``python3`` kernel spec (Colab, GitHub)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec is not python3"
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cell"
    counts = [c.execution_count for _, c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} is not saved from one top-to-bottom run (execution counts {counts}): "
        f"run .ci/execute-notebooks {path.stem}"
    )
    assert sum(len(c.outputs) for _, c in cells) > 0, f"{path.name} is saved without outputs"
    for i, cell in cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path.name} cell {i + 1} holds an error output: {errors[0].ename}: {errors[0].evalue}"


def _colab_install_lines() -> list[str]:
    """The install commands of the README's "Install in Colab" cell, uncommented (the optional
    model wheels left out: each notebook names the ones it uses)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Install in Colab", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    lines = [line.removeprefix("# ").strip() for line in block.splitlines()]
    return [x for x in lines if x.startswith(("%pip install", "!curl", "import os;")) and "--no-deps" not in x]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_the_install_cell(path: Path) -> None:
    """The first code cell carries the README's Colab install commands, commented out, so that
    Colab users uncomment one route and a run where recforge is installed does nothing extra."""
    want = _colab_install_lines()
    assert len(want) >= 4, f"the README's Colab cell lost its install commands: {want}"
    _, first = _code_cells(nbformat.read(path, as_version=4))[0]
    lines = first.source.splitlines()
    commented = [line.removeprefix("# ").strip() for line in lines if line.startswith("# ")]
    missing = [x for x in want if x not in commented]
    assert not missing, f"{path.name}'s first code cell lacks the README's install commands {missing}"
    live = [x for x in lines if x.lstrip().startswith(("%pip", "!pip", "!curl"))]
    assert not live, f"{path.name} installs on every run: {live}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, jupyter: Path, tmp_path: Path) -> None:
    """Every cell runs without error in a fresh kernel on the small setting."""
    t0 = time.perf_counter()
    try:
        nb = RUNNER.execute(path, cwd=tmp_path, timeout=CELL_TIMEOUT)
    except RUNNER.NotebookError as e:
        pytest.fail(str(e), pytrace=False)
    cells = _code_cells(nb)
    assert [c.execution_count for _, c in cells] == list(range(1, len(cells) + 1))
    assert not [o for _, c in cells for o in c.outputs if o.output_type == "error"]
    print(f"\n{path.name}: {time.perf_counter() - t0:.1f} s in a real kernel (small setting)")


def test_a_failing_cell_is_named(jupyter: Path, tmp_path: Path) -> None:
    """The runner's kernel is this interpreter with the small setting, and a failing cell stops
    the run with an error naming the notebook and the cell."""
    import sys

    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    path = tmp_path / "broken.ipynb"
    nbformat.write(new_notebook(cells=[
        new_markdown_cell("# a notebook whose third cell fails"),
        new_code_cell("import os, sys\nprint(sys.executable, os.environ['RECFORGE_NOTEBOOK_SMALL'], os.getcwd())"),
        new_code_cell("x = 1 / 0"),
        new_code_cell("print('never')"),
    ]), path)  # fmt: skip
    with pytest.raises(RUNNER.NotebookError) as info:
        RUNNER.execute(path, cwd=tmp_path, timeout=60)
    assert info.value.notebook == "broken.ipynb" and info.value.cell == 2
    assert str(info.value).startswith("broken.ipynb: cell 3 ('x = 1 / 0') failed:")
    assert "ZeroDivisionError" in str(info.value)

    path.write_text(path.read_text().replace("x = 1 / 0", "x = 1"))
    nb = RUNNER.execute(path, cwd=tmp_path, timeout=60)
    assert nb.cells[1].outputs[0].text.split() == [sys.executable, "1", str(tmp_path)]
    assert nb.cells[3].outputs[0].text == "never\n"
