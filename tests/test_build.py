"""The extension builds, loads next to torch, and crosses the boundary without copies."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import recforge
from recforge import errors


def test_version_and_public_names() -> None:
    assert recforge.__version__ == "0.1.0"
    for name in recforge.__all__:
        assert hasattr(recforge, name), name


def test_device_reports_what_torch_sees() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert recforge.device() == expected
    assert recforge.resolve_device("auto") == expected
    assert recforge.resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:999", ""])
def test_bad_device_names_are_config_errors(bad: str) -> None:
    with pytest.raises(errors.ConfigError):
        recforge.resolve_device(bad)


def test_tensor_in_place_change_in_rust_is_seen_by_python() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    view = t[1]
    out = recforge._native._testing._tensor_add_(t, 10.0)
    # Same storage: the Python tensor, a view of it and the returned tensor all see the change.
    assert torch.equal(t, torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10)
    assert torch.equal(view, torch.tensor([13.0, 14.0, 15.0]))
    assert out.data_ptr() == t.data_ptr()
    out.mul_(2)  # and a change made in Python to the returned tensor is seen by the original
    assert t[0, 0].item() == 20.0


def test_tensor_made_in_rust_is_a_torch_tensor() -> None:
    t = recforge._native._testing._tensor_arange(5)
    assert isinstance(t, torch.Tensor)
    assert t.dtype == torch.float32
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # Owned by Python now: survives and is writable.
    t += 1
    assert t.sum().item() == 15.0


def test_non_tensor_is_a_data_error_and_torch_failures_are_torch_errors() -> None:
    with pytest.raises(errors.DataError, match="expected a torch.Tensor, got ndarray"):
        recforge._native._testing._tensor_add_(np.zeros(3), 1.0)
    leaf = torch.zeros(3, requires_grad=True)
    with pytest.raises(errors.TorchError):
        recforge._native._testing._tensor_add_(leaf, 1.0)  # in-place on a leaf that requires grad


def test_exception_hierarchy() -> None:
    assert issubclass(errors.DataError, errors.RecforgeError)
    assert issubclass(errors.SplitError, errors.DataError)
    assert issubclass(errors.ConfigError, errors.RecforgeError)
    assert issubclass(errors.TorchError, errors.RecforgeError)
    assert issubclass(errors.StorageError, errors.RecforgeError)
    assert errors.DataError.__module__ == "recforge.errors"


def test_thread_pool_size_comes_from_the_environment() -> None:
    code = "import recforge; print(recforge.num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "RECFORGE_NUM_THREADS": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "3"
