//! Keeping a model's pool threads awake for the length of a run.
//!
//! A run is a sequence of ops, each split across the pool's threads. Between two ops rayon's idle
//! threads go to sleep within microseconds, and waking one for the next op costs tens of microseconds
//! on a virtual machine: at 128 tokens a run has about a hundred such ops, and BERT-base on two
//! threads took 86 ms instead of 83, the FFF encoder of `scripts/bench-encoder.sh` 10.1 ms instead of
//! 9.2 (`scripts/alternate.sh`, five rounds each). So while a run lasts, every pool thread but the one
//! running it polls for work ([`rayon::yield_now`]) instead of sleeping, as ONNX Runtime's threads spin
//! between ops.
//!
//! A polling thread stops when the run ends, and also after [`IDLE_LIMIT`] without finding work: it may
//! be polling from inside a piece of the run that it is waiting on (rayon runs queued work while it
//! waits), so it must never wait for the run's end alone. The runner re-arms the threads that stopped
//! before its next op ([`rearm`]).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A polling thread that has found no work for this long goes back to sleeping between ops: longer
/// than the serial stretches between a run's parallel ops, short enough that a long serial op does
/// not keep a core busy for nothing.
pub const IDLE_LIMIT: Duration = Duration::from_millis(1);

/// After this long without work a polling thread also yields its core to the OS between polls, so
/// that another process on a loaded machine is not kept waiting.
const YIELD_AFTER: Duration = Duration::from_micros(50);

/// What the runner and the polling threads share.
struct Shared {
    /// Cleared when the run ends.
    active: AtomicBool,
    /// Polling jobs handed out and not yet finished.
    outstanding: AtomicUsize,
    /// The pool index of the thread running the model.
    runner: usize,
    /// The pool's other threads.
    others: usize,
}

thread_local! {
    /// The run this thread is running, while its [`Warm`] guard lives.
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// Keeps the current pool's other threads polling until dropped (see the module docs).
pub struct Warm {
    shared: Arc<Shared>,
    previous: Option<Arc<Shared>>,
}

impl Warm {
    /// Starts polling on the current pool's other threads; `None` outside a pool or in a pool of one
    /// thread. To be called on the thread that runs the model, inside its pool.
    pub fn start() -> Option<Warm> {
        let runner = rayon::current_thread_index()?;
        let others = rayon::current_num_threads()
            .checked_sub(1)
            .filter(|&n| n > 0)?;
        let shared = Arc::new(Shared {
            active: AtomicBool::new(true),
            outstanding: AtomicUsize::new(0),
            runner,
            others,
        });
        let previous = CURRENT.with(|c| c.replace(Some(shared.clone())));
        arm(&shared);
        Some(Warm { shared, previous })
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.shared.active.store(false, Ordering::Release);
        CURRENT.with(|c| *c.borrow_mut() = self.previous.take());
    }
}

/// Before an op of the run: hands polling jobs out again if every thread's has stopped. Does nothing
/// on a thread without a live [`Warm`].
pub fn rearm() {
    CURRENT.with(|c| {
        if let Some(shared) = c.borrow().as_ref() {
            if shared.outstanding.load(Ordering::Acquire) == 0 {
                arm(shared);
            }
        }
    });
}

/// How many polling jobs of the current run have not finished (0 without a live [`Warm`]).
pub fn outstanding() -> usize {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map_or(0, |s| s.outstanding.load(Ordering::Acquire))
    })
}

/// One polling job on every thread of the current pool; the runner's own returns at once.
fn arm(shared: &Arc<Shared>) {
    shared
        .outstanding
        .fetch_add(shared.others, Ordering::AcqRel);
    let shared = shared.clone();
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() != shared.runner {
            poll(&shared);
            shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    });
}

/// Runs the pool's queued work as it appears, until the run ends or none has come for [`IDLE_LIMIT`].
fn poll(shared: &Shared) {
    let mut last_work = Instant::now();
    while shared.active.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = Instant::now();
            continue;
        }
        let idle = last_work.elapsed();
        if idle >= IDLE_LIMIT {
            return;
        }
        if idle >= YIELD_AFTER {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Waits until the current run's polling jobs have all finished, for at most a second.
    fn settle() -> usize {
        let start = Instant::now();
        while outstanding() > 0 && start.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
        outstanding()
    }

    #[test]
    fn nothing_outside_a_pool_or_in_a_pool_of_one() {
        assert!(Warm::start().is_none());
        assert!(pool(1).install(Warm::start).is_none());
        rearm();
        assert_eq!(outstanding(), 0);
    }

    #[test]
    fn parallel_work_during_a_run_is_done_and_polling_ends_when_idle() {
        pool(3).install(|| {
            let warm = Warm::start().expect("a pool of three");
            for round in 0..50u64 {
                rearm();
                let sum: u64 = (0..10_000u64).into_par_iter().map(|i| i * round).sum();
                assert_eq!(sum, round * 10_000 * 9_999 / 2);
            }
            // Idle for longer than the limit: every polling job stops by itself, run or not.
            assert_eq!(settle(), 0);
            rearm();
            assert!(outstanding() <= 2);
            drop(warm);
        });
    }

    #[test]
    fn nested_parallel_work_while_polling_finishes() {
        // Polling threads run pieces of joins that wait on other pieces: each finishes.
        pool(2).install(|| {
            let _warm = Warm::start().unwrap();
            let total: usize = (0..64usize)
                .into_par_iter()
                .map(|i| (0..i).into_par_iter().map(|j| j % 7).sum::<usize>())
                .sum();
            let want: usize = (0..64usize)
                .map(|i| (0..i).map(|j| j % 7).sum::<usize>())
                .sum();
            assert_eq!(total, want);
        });
    }

    #[test]
    fn a_run_inside_a_run_restores_the_outer_one() {
        pool(2).install(|| {
            let outer = Warm::start().unwrap();
            let inner = Warm::start().unwrap();
            assert!(Arc::ptr_eq(
                &CURRENT.with(|c| c.borrow().clone()).unwrap(),
                &inner.shared
            ));
            drop(inner);
            assert!(Arc::ptr_eq(
                &CURRENT.with(|c| c.borrow().clone()).unwrap(),
                &outer.shared
            ));
            drop(outer);
            assert!(CURRENT.with(|c| c.borrow().is_none()));
        });
    }
}
