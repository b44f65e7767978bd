"""Where a run's time goes inside recforge's Rust core, beside ``torch.profiler``.

``torch.profiler`` sees every libtorch kernel recforge calls, but not recforge's own compute: the
fused single-pass optimiser (Adam/AdamW and SparseAdam over contiguous float32 CPU tensors),
dropout masks drawn by recforge's generator, FM/NFM batch building on the host, and training
negatives. :func:`native_timers` times those sections::

    with torch.profiler.profile() as prof, recforge.profiling.native_timers() as timers:
        model.fit(train)
    timers.seconds["optimizer"]      # seconds in the fused optimiser pass
    timers.total                     # all sections together

The timers are process-wide (every thread), cost one atomic load per section when off, and run
one collection at a time: a second ``native_timers()`` inside the first raises ConfigError.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from . import _native

__all__ = ["NativeTimes", "native_timers", "SECTIONS"]

#: The sections, in the order they are reported.
SECTIONS = ("optimizer", "dropout_masks", "batch_building", "sampling")


@dataclass
class NativeTimes:
    """What :func:`native_timers` collected, filled when its ``with`` block ends: per section,
    ``calls`` (timed calls) and ``seconds``."""

    calls: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Seconds in all sections together (they never overlap)."""
        return sum(self.seconds.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {self.seconds[k]:.3f} s / {self.calls[k]}" for k in self.seconds)
        return f"NativeTimes({parts})" if parts else "NativeTimes(running)"


@contextmanager
def native_timers() -> Iterator[NativeTimes]:
    """Times recforge's own Rust compute while the block runs (see the module docstring); the
    yielded :class:`NativeTimes` is filled when the block ends, also when it raises."""
    _native._timers_start()
    out = NativeTimes()
    try:
        yield out
    finally:
        for name, calls, seconds in _native._timers_stop():
            out.calls[name] = int(calls)
            out.seconds[name] = float(seconds)
