//! Intel AMX (Advanced Matrix Extensions): whether this process may use the tile registers, and
//! the tile configuration the AMX kernels load.
//!
//! AMX needs three things: the CPU's AMX-TILE and the product's AMX-INT8 or AMX-BF16 (CPUID leaf
//! 7), the OS saving the tile state (XCR0 bits 17 and 18), and, on Linux, the process's permission
//! to use the 8 KiB of tile data, granted once by `arch_prctl(ARCH_REQ_XCOMP_PERM)` for every
//! thread of the process. [`available`] checks all three once; where any is missing the AMX
//! kernels are not offered and the others run.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
use std::sync::OnceLock;

/// The AMX products a kernel may need besides the tile registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// `tdpbusd` and its kin: int8 dot products summed in i32.
    Int8,
    /// `tdpbf16ps`: bf16 pair products summed in f32.
    Bf16,
}

#[derive(Clone, Copy)]
struct Support {
    int8: bool,
    bf16: bool,
}

/// Whether this CPU and OS let this process run AMX tiles with `product`; detected, and the tile
/// permission requested, once.
pub fn available(product: Product) -> bool {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    let s = SUPPORT.get_or_init(detect);
    match product {
        Product::Int8 => s.int8,
        Product::Bf16 => s.bf16,
    }
}

fn detect() -> Support {
    let none = Support {
        int8: false,
        bf16: false,
    };
    if std::env::var_os("FFF_NO_AMX").is_some() {
        return none;
    }
    // Leaf 7 is read only where leaf 0 says it exists.
    if __cpuid(0).eax < 7 {
        return none;
    }
    let leaf7 = __cpuid_count(7, 0);
    let tile = leaf7.edx & (1 << 24) != 0;
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if !tile || !osxsave {
        return none;
    }
    // SAFETY: OSXSAVE (checked above) means the OS has enabled XGETBV.
    let xcr0 = unsafe { xcr0() };
    if xcr0 & (0b11 << 17) != 0b11 << 17 || !request_tile_data() {
        return none;
    }
    Support {
        int8: leaf7.edx & (1 << 25) != 0,
        bf16: leaf7.edx & (1 << 22) != 0,
    }
}

/// # Safety
/// CPUID reports OSXSAVE.
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    _xgetbv(0)
}

/// Asks Linux for the process's permission to use the tile data (needed since Linux 5.16; the
/// call fails on kernels without it, which then do not save the tile state either).
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's permission set.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// A tile configuration (palette 1): the rows and bytes per row of each of the 8 tile registers,
/// as `ldtilecfg` reads it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Every tile unused.
    pub const fn new() -> TileConfig {
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        }
    }

    /// Tile `t` (0 to 7) holds `rows` rows (1 to 16) of `bytes` bytes (4 to 64, a multiple of 4).
    pub const fn tile(mut self, t: usize, rows: u8, bytes: u16) -> TileConfig {
        assert!(
            t < 8
                && rows >= 1
                && rows <= 16
                && bytes >= 4
                && bytes <= 64
                && bytes.is_multiple_of(4)
        );
        self.rows[t] = rows;
        self.colsb[t] = bytes;
        self
    }

    /// Loads this configuration into the calling thread's tile registers (zeroing them).
    ///
    /// # Safety
    /// [`available`] returned true for the products the caller runs, and every tile the caller
    /// uses is configured (the CPU faults on an invalid configuration).
    #[inline]
    pub unsafe fn load(&self) {
        // SAFETY: `self` is a 64-byte palette-1 configuration, as `ldtilecfg` reads; the caller
        // promises the CPU and OS allow tiles.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) self as *const TileConfig, options(nostack, readonly));
        }
    }
}

impl Default for TileConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Returns the calling thread's tiles to their initial state, so that the OS need not save them.
///
/// # Safety
/// [`available`] returned true.
#[inline]
pub unsafe fn release() {
    // SAFETY: the caller promises the CPU and OS allow tiles.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_is_the_64_bytes_ldtilecfg_reads() {
        assert_eq!(std::mem::size_of::<TileConfig>(), 64);
        let c = TileConfig::new().tile(3, 16, 64);
        // SAFETY: a plain-old-data struct viewed as its bytes.
        let bytes: [u8; 64] = unsafe { std::mem::transmute(c) };
        assert_eq!(bytes[0], 1);
        assert_eq!(u16::from_le_bytes([bytes[16 + 6], bytes[16 + 7]]), 64);
        assert_eq!(bytes[48 + 3], 16);
    }

    #[test]
    fn a_configuration_loads_and_releases_where_amx_runs() {
        if !available(Product::Int8) && !available(Product::Bf16) {
            return;
        }
        let c = TileConfig::new().tile(0, 16, 64);
        // SAFETY: AMX is available and tile 0, the only one used, is configured.
        unsafe {
            c.load();
            release();
        }
    }
}
