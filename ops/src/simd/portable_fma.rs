//! Plain Rust with fused multiply-add: aarch64, where NEON and FMA are baseline.

use super::{portable, Vector};
use crate::element::{Bf16, Element};

/// Plain Rust with fused multiply-add. Compiled on every target, so that it is checked everywhere.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) struct PortableFma;

/// How an element type's rows are summed here.
pub trait Lanes {
    /// Whether its sums use the fused bodies below; widened types take [`portable`]'s plain ones,
    /// the sums they have always had on aarch64.
    const FUSED: bool;
}

impl Lanes for f32 {
    const FUSED: bool = true;
}

impl Lanes for Bf16 {
    const FUSED: bool = false;
}

impl Vector for PortableFma {
    #[inline(always)]
    fn dot<E: Element>(a: &[f32], w: &[E]) -> f32 {
        if !E::FUSED {
            return portable::dot(a, w);
        }
        let mut acc = [0.0f32; 16];
        let (ac, wc) = (a.chunks_exact(16), w.chunks_exact(16));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(wc.remainder())
            .fold(0.0, |s, (x, v)| x.mul_add(v.widen(), s));
        for (ca, cw) in ac.zip(wc) {
            for j in 0..16 {
                acc[j] = ca[j].mul_add(cw[j].widen(), acc[j]);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]) {
        if !E::FUSED {
            return portable::axpy(alpha, v, y);
        }
        for (yv, xv) in y.iter_mut().zip(v) {
            *yv = alpha.mul_add(xv.widen(), *yv);
        }
    }
}
