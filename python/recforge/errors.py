"""recforge's exception hierarchy (defined in the Rust core, raised from Rust and Python alike).

::

    RecforgeError (Exception)
    ├── DataError        bad input data: lengths, ids, values, files (names the file and line)
    │   └── SplitError   a split that cannot be made as asked
    ├── ConfigError      an invalid argument or configuration value
    ├── TorchError       a libtorch operation failed
    └── StorageError     reading or writing a file failed
"""

from __future__ import annotations

from ._native import (
    ConfigError,
    DataError,
    RecforgeError,
    SplitError,
    StorageError,
    TorchError,
)

__all__ = [
    "ConfigError",
    "DataError",
    "RecforgeError",
    "SplitError",
    "StorageError",
    "TorchError",
]
