//! bfloat16 products: bf16 weights, activations rounded to bf16 per call, sums in f32.

use super::Epilogue;
use crate::element::Bf16;

pub const COLS: usize = 64;
pub const GROUP: usize = 2;

pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(COLS) * k.div_ceil(GROUP) * COLS * GROUP
}

fn at(k: usize, kk: usize, c: usize) -> usize {
    let groups = k.div_ceil(GROUP);
    ((c / COLS * groups + kk / GROUP) * COLS + c % COLS) * GROUP + kk % GROUP
}

pub fn pack(w: &[f32], k: usize, n: usize) -> Vec<Bf16> {
    let mut data = vec![Bf16::default(); packed_len(k, n)];
    for r in 0..k {
        for c in 0..n {
            data[at(k, r, c)] = Bf16::from_f32(w[r * n + c]);
        }
    }
    data
}

#[derive(Clone, Copy)]
pub struct Bf16Weights<'a> {
    data: &'a [Bf16],
    k: usize,
    n: usize,
}

impl<'a> Bf16Weights<'a> {
    pub fn new(data: &'a [Bf16], k: usize, n: usize) -> Option<Self> {
        (data.len() == packed_len(k, n)).then_some(Bf16Weights { data, k, n })
    }
}

pub fn gemm_bf16(x: &[f32], rows: usize, w: Bf16Weights, epi: Epilogue, out: &mut [f32]) {
    gemm_bf16_reference(x, rows, w, epi, out)
}

pub fn gemm_bf16_reference(x: &[f32], rows: usize, w: Bf16Weights, epi: Epilogue, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    for r in 0..rows {
        for c in 0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += Bf16::from_f32(x[r * k + kk]).to_f32() * w.data[at(k, kk, c)].to_f32();
            }
            let mut v = acc;
            if let Some(b) = epi.bias {
                v += b[c];
            }
            if let Some(a) = epi.activation {
                v = a.apply(v);
            }
            let o = &mut out[r * n + c];
            *o = if epi.accumulate { *o + v } else { v };
        }
    }
}
