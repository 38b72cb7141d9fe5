//! Plain Rust: what the baseline target vectorises on its own.

use super::Vector;
use crate::element::Element;

/// Plain Rust, no fused multiply-add: the baseline of every target.
pub(crate) struct Portable;

impl Vector for Portable {
    #[inline(always)]
    fn dot<E: Element>(a: &[f32], w: &[E]) -> f32 {
        dot(a, w)
    }

    #[inline(always)]
    fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]) {
        axpy(alpha, v, y)
    }
}

/// `a . w` in eight running sums (independent lanes, so the loop vectorises without reassociating).
#[inline(always)]
pub(crate) fn dot<E: Element>(a: &[f32], w: &[E]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, wc) = (a.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(x, v)| x * v.widen())
        .sum();
    for (ca, cw) in ac.zip(wc) {
        for j in 0..8 {
            acc[j] += ca[j] * cw[j].widen();
        }
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

/// `y += alpha * v`, a multiply and an add per element.
#[inline(always)]
pub(crate) fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(v) {
        *yv += alpha * xv.widen();
    }
}
