//! The thread pool that runs recforge's parallel work, safe after `fork`.
//!
//! Rayon's global pool is sized once from `RECFORGE_NUM_THREADS` (default: all cores) by
//! [`init_global`]. A process forked after the pool started (Python's `multiprocessing` with the
//! fork start method, Optuna workers, notebooks) inherits the pool's bookkeeping but none of its
//! threads, so parallel work there would wait forever. [`run`] notices a fork by the process id
//! and runs the work on a pool of the child's own instead.

use std::sync::{Arc, Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

static HOME_PID: OnceLock<u32> = OnceLock::new();
static CHILD_POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

/// Threads asked for by `RECFORGE_NUM_THREADS`, if set to a positive integer.
pub fn configured_threads() -> Option<usize> {
    std::env::var("RECFORGE_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// Sizes rayon's global pool from `RECFORGE_NUM_THREADS` and records this process as its home.
/// Later calls (a second import) change nothing.
pub fn init_global() {
    HOME_PID.get_or_init(|| {
        if let Some(n) = configured_threads() {
            // Fails only if the global pool already exists; then it keeps its size.
            let _ = ThreadPoolBuilder::new().num_threads(n).build_global();
        }
        std::process::id()
    });
}

/// Number of threads parallel work uses in this process.
pub fn num_threads() -> usize {
    match child_pool() {
        Some(p) => p.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

fn child_pool() -> Option<Arc<ThreadPool>> {
    let pid = std::process::id();
    if *HOME_PID.get_or_init(|| pid) == pid {
        return None;
    }
    let mut slot = CHILD_POOL.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_ref() {
        Some((owner, pool)) if *owner == pid => Some(pool.clone()),
        _ => {
            let threads = configured_threads()
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let pool = ThreadPoolBuilder::new().num_threads(threads).build().ok()?;
            let pool = Arc::new(pool);
            *slot = Some((pid, pool.clone()));
            Some(pool)
        }
    }
}

/// Runs `work` (which may use rayon's parallel iterators) on this process's pool.
pub fn run<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    match child_pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn run_executes_parallel_work_in_the_home_process() {
        init_global();
        let s: u64 = run(|| (0..10_000u64).into_par_iter().sum());
        assert_eq!(s, 49_995_000);
        assert!(num_threads() >= 1);
    }
}
