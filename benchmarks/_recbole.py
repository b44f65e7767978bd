"""What the RecBole comparisons share: RecBole 1.2.1 under NumPy 2, and our splits as its atomic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import recforge


def numpy_aliases() -> None:
    """RecBole 1.2.1 predates NumPy 2: give it the aliases it reads (same types, old names)."""
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if old not in np.__dict__:
            setattr(np, old, new)


def write_atomic(folder: Path, name: str, parts: dict[str, recforge.Interactions]) -> None:
    """`folder/name.part.inter` for each part (RecBole's ``benchmark_filename`` layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, x in parts.items():
        a = x.to_arrays()
        pd.DataFrame({"user_id:token": np.char.add("u", a["users"].astype(str)),
                      "item_id:token": np.char.add("i", a["items"].astype(str))}).to_csv(  # fmt: skip
            folder / f"{name}.{part}.inter", sep="\t", index=False
        )
