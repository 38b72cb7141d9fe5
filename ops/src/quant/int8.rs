//! int8 products: weights quantised per output column, activations per row.

use super::Epilogue;

pub const COLS: usize = 64;
pub const GROUP: usize = 4;

pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(COLS) * k.div_ceil(GROUP) * COLS * GROUP
}

pub struct PackedI8 {
    pub data: Vec<i8>,
    pub scales: Vec<f32>,
    pub col_sums: Vec<i32>,
    pub k: usize,
    pub n: usize,
}

fn at(k: usize, kk: usize, c: usize) -> usize {
    let groups = k.div_ceil(GROUP);
    ((c / COLS * groups + kk / GROUP) * COLS + c % COLS) * GROUP + kk % GROUP
}

pub fn quantize_pack(w: &[f32], k: usize, n: usize) -> PackedI8 {
    let mut data = vec![0i8; packed_len(k, n)];
    let mut scales = vec![0.0; n];
    let mut col_sums = vec![0; n];
    for c in 0..n {
        let max = (0..k).map(|r| w[r * n + c].abs()).fold(0.0f32, f32::max);
        let s = max / 127.0;
        scales[c] = s;
        for r in 0..k {
            let q = if s > 0.0 {
                (w[r * n + c] / s).round_ties_even().clamp(-127.0, 127.0) as i8
            } else {
                0
            };
            data[at(k, r, c)] = q;
            col_sums[c] += q as i32;
        }
    }
    PackedI8 {
        data,
        scales,
        col_sums,
        k,
        n,
    }
}

#[derive(Clone, Copy)]
pub struct I8Weights<'a> {
    data: &'a [i8],
    scales: &'a [f32],
    col_sums: &'a [i32],
    k: usize,
    n: usize,
}

impl<'a> I8Weights<'a> {
    pub fn new(
        data: &'a [i8],
        scales: &'a [f32],
        col_sums: &'a [i32],
        k: usize,
        n: usize,
    ) -> Option<Self> {
        (data.len() == packed_len(k, n) && scales.len() == n && col_sums.len() == n).then_some(
            I8Weights {
                data,
                scales,
                col_sums,
                k,
                n,
            },
        )
    }
}

impl PackedI8 {
    pub fn view(&self) -> I8Weights<'_> {
        I8Weights::new(&self.data, &self.scales, &self.col_sums, self.k, self.n).expect("packed")
    }
}

#[derive(Default)]
pub struct QuantRows {
    rows: usize,
    k: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
}

impl QuantRows {
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        let kp = k.div_ceil(GROUP) * GROUP;
        self.rows = rows;
        self.k = k;
        self.data.clear();
        self.data.resize(rows * kp, 128);
        self.scales.clear();
        for r in 0..rows {
            let row = &x[r * k..(r + 1) * k];
            let s = row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            self.scales.push(s);
            for (j, &v) in row.iter().enumerate() {
                let q = if s > 0.0 {
                    (v / s).round_ties_even().clamp(-127.0, 127.0) as i32
                } else {
                    0
                };
                self.data[r * kp + j] = (q + 128) as u8;
            }
        }
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn k(&self) -> usize {
        self.k
    }
}

pub fn gemm_i8(x: &QuantRows, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    gemm_i8_reference(x, w, epi, out)
}

pub fn linear_i8(x: &[f32], rows: usize, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    let mut q = QuantRows::default();
    q.quantize(x, rows, w.k);
    gemm_i8(&q, w, epi, out)
}

pub fn gemm_i8_reference(x: &QuantRows, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    let kp = k.div_ceil(GROUP) * GROUP;
    for r in 0..x.rows {
        for c in 0..n {
            let mut acc = 0i32;
            for kk in 0..k {
                acc += x.data[r * kp + kk] as i32 * w.data[at(k, kk, c)] as i32;
            }
            acc -= 128 * w.col_sums[c];
            let mut v = acc as f32 * (x.scales[r] * w.scales[c]);
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
