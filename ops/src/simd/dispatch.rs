//! The run-time choice of instruction set. An [`Isa`] is made only here, after detecting its features
//! on this CPU, so holding one is what lets code run kernels compiled for it.

use std::sync::OnceLock;

use super::{Portable, Vector};

/// An instruction set this CPU has, as detected at run time: only [`Isa::best`] and [`Isa::available`]
/// make one, so a value outside this module is proof that its kernels may run here.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isa(Kind);

/// The instruction sets kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// x86-64 with AVX-512F (and FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// x86-64 with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// aarch64 with NEON (always present there).
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// Whatever the baseline target has: SSE2 on x86-64.
    Portable,
}

impl std::fmt::Debug for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Isa {
    /// The widest instruction set this CPU supports, detected once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| Isa::available()[0])
    }

    /// Every instruction set this CPU supports, widest first (tests run kernels on each).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa(Kind::Avx512));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa(Kind::Avx2Fma));
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(Isa(Kind::Neon));
        v.push(Isa(Kind::Portable));
        v
    }

    /// Which instruction set this is.
    pub(crate) fn kind(self) -> Kind {
        self.0
    }
}

/// Defines `fn $name(args)` that runs `$body`, an `#[inline(always)]` function taking the same
/// arguments, compiled for the instruction set [`Isa::best`] picked: plain loops in the body are then
/// vectorised for that set. For kernels written without the [`Vector`] trait.
macro_rules! on_best_isa {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::simd::Isa::best().kind() {
                    // SAFETY: `Isa::best` reports AVX-512 only after detecting AVX-512F and FMA.
                    $crate::simd::Kind::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: `Isa::best` reports AVX2 only after detecting AVX2 and FMA.
                    $crate::simd::Kind::Avx2Fma => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use on_best_isa;

/// Work compiled once per instruction set: `run::<V>` is instantiated inside a function with `V`'s
/// target features.
pub(crate) trait Body {
    fn run<V: Vector>(self);
}

/// Runs `body` with the vector primitives of `isa`.
pub(crate) fn on_isa<B: Body>(isa: Isa, body: B) {
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of AVX-512 is made only by `Isa::available`, after detecting AVX-512F and
        // FMA on this CPU.
        Kind::Avx512 => unsafe { on_avx512(body) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Kind::Avx2Fma => unsafe { on_avx2(body) },
        // NEON and its fused multiply-add are part of the aarch64 baseline.
        #[cfg(target_arch = "aarch64")]
        Kind::Neon => body.run::<super::PortableFma>(),
        Kind::Portable => body.run::<Portable>(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn on_avx512<B: Body>(body: B) {
    body.run::<super::Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn on_avx2<B: Body>(body: B) {
    body.run::<super::Avx2>()
}
