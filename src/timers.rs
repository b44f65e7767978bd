//! recforge's own timers: the time a run spends in recforge's Rust compute, which libtorch's
//! profiler cannot see (the fused optimiser pass, dropout masks, host-side batch building).
//!
//! Off by default: a [`Scope`] then costs one relaxed atomic load. [`start`] clears and enables
//! the counters for the whole process, [`stop`] disables them and returns what they collected.
//! Sections never nest, so their seconds add up to recforge's share of a run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{RecforgeError, Result};

/// What a timer measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The fused single-pass optimiser kernels (Adam, SparseAdam's rows, the sparse gradients
    /// summed into and cleared from their kept buffers).
    Optimizer = 0,
    /// Dropout masks drawn by recforge's generator.
    DropoutMasks = 1,
    /// FM/NFM batch building on the host: example ids gathered, users and items deduplicated.
    BatchBuilding = 2,
    /// Training negatives drawn for an epoch.
    Sampling = 3,
}

impl Section {
    /// Every section, in the order of [`stop`]'s result.
    pub const ALL: [Section; 4] = [
        Section::Optimizer,
        Section::DropoutMasks,
        Section::BatchBuilding,
        Section::Sampling,
    ];

    /// The section's name as reported.
    pub fn name(self) -> &'static str {
        match self {
            Section::Optimizer => "optimizer",
            Section::DropoutMasks => "dropout_masks",
            Section::BatchBuilding => "batch_building",
            Section::Sampling => "sampling",
        }
    }
}

const N: usize = Section::ALL.len();
static ENABLED: AtomicBool = AtomicBool::new(false);
static CALLS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static NANOS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Clears the counters and starts counting; an error when they are already running (one
/// collection at a time per process).
pub fn start() -> Result<()> {
    if ENABLED.load(Ordering::Acquire) {
        return Err(RecforgeError::config(
            "recforge's timers are already running (one collection at a time per process)",
        ));
    }
    for (c, n) in CALLS.iter().zip(&NANOS) {
        c.store(0, Ordering::Relaxed);
        n.store(0, Ordering::Relaxed);
    }
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

/// Stops counting and returns, per section, its name, the number of timed calls and their
/// seconds.
pub fn stop() -> Vec<(&'static str, u64, f64)> {
    ENABLED.store(false, Ordering::Release);
    Section::ALL
        .iter()
        .map(|&s| {
            let i = s as usize;
            (
                s.name(),
                CALLS[i].load(Ordering::Relaxed),
                NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
            )
        })
        .collect()
}

/// Whether the counters are running.
pub fn running() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Times its own life into `section` when the counters run (created by [`scope`]).
pub struct Scope {
    section: Section,
    start: Option<Instant>,
}

/// A timer for `section` that stops when dropped.
pub fn scope(section: Section) -> Scope {
    Scope {
        section,
        start: running().then(Instant::now),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.start {
            let i = self.section as usize;
            let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
            NANOS[i].fetch_add(nanos, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test, as the counters are process-wide. Other tests may run recforge's kernels on
    // other threads meanwhile, so counts are bounded from below only.
    #[test]
    fn counts_between_start_and_stop() {
        start().unwrap();
        assert!(start().is_err(), "a second collection must be refused");
        for _ in 0..3 {
            let _t = scope(Section::Optimizer);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let out = stop();
        assert!(!running());
        let names: Vec<_> = out.iter().map(|r| r.0).collect();
        assert_eq!(
            names,
            ["optimizer", "dropout_masks", "batch_building", "sampling"]
        );
        assert!(out[0].1 >= 3, "{out:?}");
        assert!(out[0].2 >= 0.006 && out[0].2 < 60.0, "{out:?}");
    }
}
