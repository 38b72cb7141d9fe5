//! How many threads a kernel may use.

use std::cell::Cell;

thread_local! {
    /// Set while [`serial`] runs on this thread.
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// The threads of the current rayon pool (rayon's global pool outside any), or 1 inside [`serial`].
pub fn available() -> usize {
    if SERIAL.with(Cell::get) {
        1
    } else {
        rayon::current_num_threads().max(1)
    }
}

/// Runs `f` with every kernel it calls on this thread kept on this thread: no rayon pool is woken.
/// A model with one thread runs each call this way, without handing it to a pool first.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous state however `f` ends, unwinding included.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_inside_serial_and_the_pool_size_inside_a_pool() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(pool.install(available), 3);
        assert_eq!(pool.install(|| serial(available)), 1);
        assert_eq!(serial(|| serial(available)), 1);
        assert_eq!(pool.install(available), 3);
    }
}
