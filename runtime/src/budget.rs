//! The memory budget of a call: how many bytes of values one [`crate::Model::run`] (or any other
//! `run*`) may hold at once, so that a shape asking for more than the machine has is an error naming
//! the node, instead of an abort or the kernel's OOM killer.
//!
//! The executor counts the bytes of the values a call holds (the inputs it owns and the values its
//! nodes computed, until they are freed) and publishes, before each node, the budget and that count
//! on its thread. The ops whose output size can outgrow their inputs (by broadcasting, products,
//! gathers, or sizes read from data) check the bytes they are about to allocate against it before
//! allocating ([`check`], through the op set's `check_alloc`); the executor checks the rest, whose
//! outputs are no larger than an input, once they finish. Counting in the runtime is what makes the
//! budget hold whatever the allocator does: a fallible reservation proves nothing where the allocator
//! maps memory without reserving it (mimalloc, `fffrun`'s, does), and the first write then faults
//! the whole size in.
//!
//! Outside a call (the compiler folding constants, a direct [`crate::opset::eval`]) no budget is in
//! force.

use std::cell::Cell;

use crate::error::{Error, Result};

/// The default budget where the machine's available memory cannot be read (systems other than
/// Linux, or no `/proc`).
pub const FALLBACK_BYTES: usize = 4 << 30;

/// A budget in force on a thread: its limit and the bytes the call already holds.
#[derive(Clone, Copy, Debug)]
struct InForce {
    limit: usize,
    held: usize,
}

impl InForce {
    const NONE: InForce = InForce {
        limit: usize::MAX,
        held: 0,
    };
}

thread_local! {
    /// The budget of the call executing on this thread ([`InForce::NONE`] outside a call).
    static CURRENT: Cell<InForce> = const { Cell::new(InForce::NONE) };
}

/// The budget of a call on this thread, from its start to its end (the previous one comes back
/// however the call ends; a call may run nested inside another's parallel loop on the same thread).
pub(crate) struct Scope {
    previous: InForce,
    limit: usize,
}

impl Scope {
    /// Puts a budget of `limit` bytes in force on this thread, with nothing held yet.
    pub(crate) fn enter(limit: usize) -> Scope {
        let previous = CURRENT.with(|c| c.replace(InForce { limit, held: 0 }));
        Scope { previous, limit }
    }

    /// Says that the call now holds `held` bytes: what the next op may allocate is the rest.
    #[inline]
    pub(crate) fn hold(&self, held: usize) {
        CURRENT.with(|c| {
            c.set(InForce {
                limit: self.limit,
                held,
            })
        });
    }

    /// An error unless `held` bytes fit the budget; `what` says what brought the count there.
    pub(crate) fn check_held(&self, held: usize, what: &str) -> Result<()> {
        if held <= self.limit {
            return Ok(());
        }
        Err(Error::TooLarge(format!(
            "{what} bring the values held to {}, over the memory budget of {} a call ({HOW_TO_RAISE})",
            bytes_text(held),
            bytes_text(self.limit),
        )))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// How a user raises the budget, for messages.
const HOW_TO_RAISE: &str = "set with fffrun --max-memory or Options::max_memory";

/// An error unless `bytes` more fit the budget in force on this thread; `what` names the
/// allocation (a shape and dtype) for the message. Costs a thread-local read.
pub(crate) fn check(bytes: usize, what: impl FnOnce() -> String) -> Result<()> {
    let InForce { limit, held } = CURRENT.with(Cell::get);
    if bytes <= limit.saturating_sub(held) {
        return Ok(());
    }
    Err(Error::TooLarge(format!(
        "{} needs {}, over the memory budget of {} a call with {} already held ({HOW_TO_RAISE})",
        what(),
        bytes_text(bytes),
        bytes_text(limit),
        bytes_text(held),
    )))
}

/// The bytes a budget of `max_memory` allows: `max_memory` itself, or where it is 0, the default,
/// [`available_memory`].
pub(crate) fn resolve(max_memory: usize) -> usize {
    if max_memory == 0 {
        available_memory()
    } else {
        max_memory
    }
}

/// The memory this process can still take, as the default budget: on Linux the smaller of the
/// system's `MemAvailable` and the room left under the process's address-space limit (`ulimit -v`,
/// RLIMIT_AS) where one is set; elsewhere, or where `/proc` cannot be read, [`FALLBACK_BYTES`].
/// Read when called; a model reads it once, when it loads.
pub fn available_memory() -> usize {
    #[cfg(target_os = "linux")]
    {
        let available = proc_field("/proc/meminfo", "MemAvailable:");
        let address_room = address_space_limit().map(|limit| {
            let used = proc_field("/proc/self/status", "VmSize:").unwrap_or(0);
            limit.saturating_sub(used)
        });
        match (available, address_room) {
            (Some(a), Some(r)) => a.min(r),
            (Some(a), None) => a,
            (None, Some(r)) => r.min(FALLBACK_BYTES),
            (None, None) => FALLBACK_BYTES,
        }
    }
    #[cfg(not(target_os = "linux"))]
    FALLBACK_BYTES
}

/// A `NAME:  123 kB` line of a `/proc` file, in bytes.
#[cfg(target_os = "linux")]
fn proc_field(path: &str, name: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let kib: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft address-space limit of this process in bytes, from `/proc/self/limits`; `None` where
/// it is unlimited or unreadable.
#[cfg(target_os = "linux")]
fn address_space_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max address space"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Parses a size in bytes as `fffrun --max-memory` takes it: a whole number, optionally followed by
/// `K`, `M`, `G` or `T` (powers of 1024, either case, optionally followed by `B` or `iB`). Zero and
/// sizes past the address space are refused.
pub fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "'{text}' is not a size: expected a number of bytes, optionally followed by K, M, G or T (as in 512M or 4G)"
            ))
        }
    };
    if number.is_empty() {
        return Err(format!(
            "'{text}' is not a size: expected a number before the unit (as in 512M or 4G)"
        ));
    }
    let n: usize = number
        .parse()
        .map_err(|_| format!("'{text}' is too large a size"))?;
    if n == 0 {
        return Err("the size must be at least 1 byte".to_string());
    }
    n.checked_mul(1 << shift)
        .filter(|&b| isize::try_from(b).is_ok())
        .ok_or_else(|| format!("'{text}' is too large a size"))
}

/// `1.50 GiB (1610612736 bytes)`: a size for messages, readable and exact.
pub fn bytes_text(bytes: usize) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    match UNITS.iter().find(|(_, shift)| bytes >> shift > 0) {
        Some((unit, shift)) => {
            let scaled = bytes as f64 / (1u64 << shift) as f64;
            format!("{scaled:.2} {unit} ({bytes} bytes)")
        }
        None => format!("{bytes} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_garbage_is_refused() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1000B"), Ok(1000));
        for bad in ["", "G", "1.5G", "-1G", "1X", "12 34", "ten", "0", "0M"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_size("99999999999999T").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
    }

    #[test]
    fn checks_follow_the_budget_in_force_and_it_is_restored_after() {
        assert!(check(usize::MAX / 2, || "outside".into()).is_ok());
        {
            let scope = Scope::enter(1000);
            assert!(check(1000, || "all".into()).is_ok());
            scope.hold(600);
            assert!(check(400, || "the rest".into()).is_ok());
            let e = check(401, || "shape [401] of bool".into()).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, Error::TooLarge(_)));
            assert!(
                text.contains("shape [401] of bool needs 401 bytes"),
                "{text}"
            );
            assert!(text.contains("budget of 1000 bytes"), "{text}");
            assert!(scope.check_held(1000, "outputs").is_ok());
            assert!(scope.check_held(1001, "outputs").is_err());
            {
                let _inner = Scope::enter(10);
                assert!(check(11, String::new).is_err());
            }
            assert!(check(400, String::new).is_ok());
        }
        assert!(check(usize::MAX / 2, String::new).is_ok());
    }

    #[test]
    fn the_default_is_positive_and_sizes_print_readably() {
        assert!(available_memory() > 0);
        assert_eq!(resolve(123), 123);
        assert_eq!(bytes_text(512), "512 bytes");
        assert_eq!(bytes_text(3 << 29), "1.50 GiB (1610612736 bytes)");
    }
}
