//! The element types weights are stored in. Kernels read each through one generic body: an element
//! type states how it widens to f32 ([`Element::widen`]) and, per instruction set, how it loads and
//! widens a vector of lanes (the `Lanes` traits in `simd/`). Activations, biases and all arithmetic
//! stay f32, so a layer of any element type computes what the f32 op computes on its widened weights.
//!
//! Adding a type (int8 next) means implementing [`Element`] here and each instruction set's `Lanes`
//! for it; the compiler names every one that is missing.

use crate::simd::Lanes;

/// A stored weight type the kernels read. Sealed: implemented for [`f32`] and [`Bf16`] only, since
/// every instruction set must know how to load it.
pub trait Element: Copy + Send + Sync + std::fmt::Debug + 'static + Lanes {
    /// The f32 this value denotes (exact for every type here).
    fn widen(self) -> f32;

    /// The values themselves when they are f32 already: kernels that read f32 only (the GEMMs) then
    /// take them without a copy.
    fn as_f32(v: &[Self]) -> Option<&[f32]>;
}

impl Element for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    fn as_f32(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
}

/// A bfloat16 number: the upper 16 bits of an f32, so widening it is exact. Halves the bytes of weight
/// rows, which is what bounds the tree kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// The nearest bfloat16 (ties to even); NaN stays NaN.
    pub fn from_f32(v: f32) -> Bf16 {
        Bf16(bf16_round(v))
    }

    /// The f32 this value denotes (exact).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

impl Element for Bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }

    fn as_f32(_: &[Bf16]) -> Option<&[f32]> {
        None
    }
}

/// Rounds each value to the nearest bf16 (ties to even): the conversion used when weights are stored
/// in bf16. NaN stays NaN; values beyond the bf16 range become infinities.
pub fn to_bf16(v: &[f32]) -> Vec<Bf16> {
    v.iter().map(|&x| Bf16::from_f32(x)).collect()
}

/// Every value widened to f32 (exactly).
pub fn to_f32<E: Element>(v: &[E]) -> Vec<f32> {
    v.iter().map(|&b| b.widen()).collect()
}

/// One value to the nearest bf16, ties to even, as a bit pattern.
#[inline]
fn bf16_round(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        // Keep the sign and force a quiet NaN (truncating could leave an all-zero mantissa: infinity).
        return (b >> 16) as u16 | 0x0040;
    }
    let lsb = (b >> 16) & 1;
    ((b + 0x7fff + lsb) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widen(v: u16) -> f32 {
        Bf16(v).to_f32()
    }

    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        assert_eq!(bf16_round(1.0), 0x3f80);
        assert_eq!(bf16_round(-0.0), 0x8000);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even pattern (down here, up below).
        assert_eq!(bf16_round(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_round(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_round(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_round(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_round(f32::MAX), 0x7f80);
        assert!(widen(bf16_round(f32::NAN)).is_nan());
        assert!(widen(bf16_round(f32::from_bits(0x7f80_0001))).is_nan());
        // Against the definition: no other bf16 is nearer.
        let mut s = 1u32;
        for _ in 0..100_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(s);
            if !x.is_finite() || x.abs() > 1e38 {
                continue;
            }
            let r = bf16_round(x);
            let err = (widen(r) as f64 - x as f64).abs();
            for n in [r.wrapping_sub(1), r.wrapping_add(1)] {
                // Neighbours in magnitude with the same sign (0x8000 - 1 is a NaN, not a neighbour).
                if (n ^ r) & 0x8000 != 0 || !widen(n).is_finite() {
                    continue;
                }
                let other = (widen(n) as f64 - x as f64).abs();
                assert!(err <= other, "{x:e}: {r:#x}");
                if err == other {
                    assert_eq!(r & 1, 0, "{x:e}: ties go to even");
                }
            }
        }
    }
}
