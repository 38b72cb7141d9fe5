//! Whether a call runs on the model's thread pool or on the caller's thread alone.
//!
//! Handing a call to the pool costs more than the hand-over: the caller sleeps while the pool's
//! threads, woken for it, find its inputs in the caller's caches rather than their own. On a
//! two-core virtual machine a 128-row FFF layer took 0.092 ms on the caller's thread and 0.115 ms
//! through a two-thread pool, and a 256-row one lost too; from about 512 rows on the pool won (2048
//! rows: 2.2 against 1.2 ms). Where that line lies depends on the machine and the model, so it is
//! learnt from the calls themselves: calls with fewer input elements than a threshold run serially,
//! and each call moves the threshold by how long it took against the time per element seen the other
//! way.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Calls that take less than this on the pool gain nothing from it: waking its threads alone costs
/// about 10 µs (a one-row FFF layer takes 1 µs on the caller's thread, 14 µs through a two-thread
/// pool). They run serially from then on.
pub const SHORT_CALL: Duration = Duration::from_micros(50);

/// A pool call shorter than this may run on the caller's thread instead, when that was faster the
/// last time it was tried. Longer calls are taken to gain from the pool: trying them alone would cost
/// more than a few lost microseconds.
pub const PROBE_CALL: Duration = Duration::from_millis(1);

/// Every this many calls, a call in between (from [`SHORT_CALL`] to [`PROBE_CALL`]) tries the other
/// way once, since a rate measured on a cold call or in a slow spell of the machine would otherwise
/// stand for good.
pub const PROBE_EVERY: usize = 64;

/// The learnt threshold, and the seconds per input element of calls each way.
#[derive(Debug, Default)]
pub struct PoolChoice {
    /// Calls with fewer input elements than this run on the caller's thread (0: none yet).
    serial_below: AtomicUsize,
    /// `f64` bits of the seconds per element of serial calls (0: none yet), a moving average over
    /// calls in a row, so that one call slowed by the machine does not switch ways.
    serial_rate: AtomicU64,
    /// The same for calls on the pool.
    pool_rate: AtomicU64,
    /// Whether the latest call ran serially: the first call after a switch sets its way's rate
    /// afresh, since the rate it replaces may be many calls old.
    last_serial: AtomicBool,
    /// Calls recorded.
    calls: AtomicUsize,
}

impl PoolChoice {
    /// Whether a call of `elements` input elements should run on the caller's thread.
    pub fn serial(&self, elements: usize) -> bool {
        elements < self.serial_below.load(Ordering::Relaxed)
    }

    /// Learns from a call of `elements` input elements that took `took`, `serial` or on the pool.
    pub fn record(&self, elements: usize, serial: bool, took: Duration) {
        let (own, other) = if serial {
            (&self.serial_rate, &self.pool_rate)
        } else {
            (&self.pool_rate, &self.serial_rate)
        };
        let sample = took.as_secs_f64() / elements.max(1) as f64;
        let switched = self.last_serial.swap(serial, Ordering::Relaxed) != serial;
        let rate = match f64::from_bits(own.load(Ordering::Relaxed)) {
            old if old > 0.0 && !switched => old + (sample - old) / 4.0,
            _ => sample,
        };
        own.store(rate.to_bits(), Ordering::Relaxed);
        let probe = self.calls.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1;
        // Whether the other way looks faster (unknown: try it).
        let other_wins = match f64::from_bits(other.load(Ordering::Relaxed)) {
            r if r > 0.0 => probe || rate > r,
            _ => true,
        };
        let between = (SHORT_CALL..PROBE_CALL).contains(&took);
        if serial {
            if took >= PROBE_CALL || (between && other_wins) {
                self.serial_below.fetch_min(elements, Ordering::Relaxed);
            }
        } else if took < SHORT_CALL || (between && other_wins) {
            self.serial_below.fetch_max(elements + 1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn short_calls_go_serial_at_once() {
        let c = PoolChoice::default();
        assert!(!c.serial(100));
        c.record(100, false, us(14));
        assert!(c.serial(100) && c.serial(50) && !c.serial(101));
    }

    #[test]
    fn a_middling_call_tries_the_callers_thread_once_and_keeps_the_faster_way() {
        // Serial wins (the 128-row layer above): it stays serial.
        let c = PoolChoice::default();
        c.record(1000, false, us(115));
        assert!(c.serial(1000));
        c.record(1000, true, us(92));
        assert!(c.serial(1000));
        // The pool wins: back to it, and a pool call as fast as before keeps it there.
        let c = PoolChoice::default();
        c.record(1000, false, us(650));
        assert!(c.serial(1000));
        c.record(1000, true, us(1100));
        assert!(!c.serial(1000));
        c.record(1000, false, us(660));
        assert!(!c.serial(1000));
    }

    #[test]
    fn the_other_way_is_tried_again_now_and_then() {
        // A cold serial call made the pool look better; a later probe finds the caller's thread faster.
        let c = PoolChoice::default();
        c.record(1000, false, us(300));
        c.record(1000, true, us(400));
        let mut serial_calls = 0;
        for _ in 0..2 * PROBE_EVERY {
            let serial = c.serial(1000);
            serial_calls += usize::from(serial);
            c.record(1000, serial, if serial { us(92) } else { us(120) });
        }
        assert!(c.serial(1000));
        assert!(serial_calls > PROBE_EVERY, "{serial_calls} serial calls");
    }

    #[test]
    fn one_slow_call_does_not_switch_ways() {
        let c = PoolChoice::default();
        c.record(1000, false, us(300));
        c.record(1000, true, us(450));
        assert!(!c.serial(1000));
        c.record(1000, false, us(300));
        c.record(1000, false, us(500));
        assert!(!c.serial(1000));
    }

    #[test]
    fn long_calls_stay_on_the_pool_and_long_serial_calls_return_to_it() {
        let c = PoolChoice::default();
        c.record(10_000, false, us(2000));
        assert!(!c.serial(10_000));
        // Short calls made smaller ones serial; a long serial call of a larger size returns to the
        // pool, the pool's rate being better.
        c.record(10, false, us(5));
        assert!(c.serial(10));
        c.record(5_000, false, us(40));
        assert!(c.serial(5_000));
        c.record(5_000, true, us(1100));
        assert!(!c.serial(5_000));
    }
}
