//! [`gemm_u8`] and [`pack_codes`]: ONNX-quantised activations (u8, one zero point) and weights
//! (any int8 code), every kernel against the ONNX formula computed from the unpacked codes.

use super::tests::{code_at, epilogues, same};
use super::*;
use crate::matmul::pseudo_random;

/// `n` bytes from a xorshift stream, one in eight at each end of the range.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            match s % 8 {
                0 => 0,
                1 => 255,
                _ => (s >> 8) as u8,
            }
        })
        .collect()
}

/// Codes over the whole int8 range, -128 and 127 included.
fn codes(n: usize, seed: u32) -> Vec<i8> {
    bytes(n, seed).into_iter().map(|b| b as i8).collect()
}

/// The ONNX graph `Mul(Cast<f32>(MatMulInteger(x, W, x_zero, 0)), scale)` then the epilogue, one
/// output at a time from the row-major codes: the sum in i64 (and checked to fit i32, as
/// MatMulInteger's int32 output must), one conversion, one multiply.
#[allow(clippy::too_many_arguments)]
fn onnx_reference(
    x: &[u8],
    rows: usize,
    x_zero: u8,
    w: &[i8],
    n: usize,
    scales: &[f32],
    epi: Epilogue,
    out: &mut [f32],
) {
    let k = w.len() / n.max(1);
    for r in 0..rows {
        for c in 0..n {
            let acc: i64 = (0..k)
                .map(|kk| (x[r * k + kk] as i64 - x_zero as i64) * w[kk * n + c] as i64)
                .sum();
            let acc = i32::try_from(acc).expect("MatMulInteger's sum fits int32");
            let mut v = acc as f32 * scales[c];
            if let Some(bias) = epi.bias {
                v += bias[c];
            }
            if let Some(act) = epi.activation {
                v = act.apply(v);
            }
            let o = &mut out[r * n + c];
            *o = if epi.accumulate { *o + v } else { v };
        }
    }
}

/// Bit for bit, but for NaN payloads and the sign of a zero that ReLU made.
fn identical(a: f32, b: f32, relu: bool) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || (relu && a == 0.0 && b == 0.0)
}

/// Every kernel of this CPU against [`onnx_reference`] on `epis` (indices into [`epilogues`]).
#[allow(clippy::too_many_arguments)]
fn check(
    x: &[u8],
    rows: usize,
    x_zero: u8,
    w: &[i8],
    n: usize,
    scales: &[f32],
    epis: &[usize],
    what: &str,
) {
    let k = w.len() / n.max(1);
    let packed = pack_codes(w, scales, k, n).expect("codes of [k, n]");
    let bias = pseudo_random(n, 11);
    let init = pseudo_random(rows * n, 13);
    let all = epilogues(&bias);
    for &e in epis {
        let epi = all[e];
        let relu = matches!(epi.activation, Some(Activation::Relu));
        let mut want = init.clone();
        onnx_reference(x, rows, x_zero, w, n, scales, epi, &mut want);
        for kernel in kernels() {
            let mut got = init.clone();
            gemm_u8_with(kernel, x, rows, x_zero, packed.view(), epi, &mut got);
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    identical(g, r, relu),
                    "{kernel:?} {what} zero {x_zero} {epi:?}, row {} column {}: {g} vs {r}",
                    i / n,
                    i % n
                );
            }
        }
    }
}

#[test]
fn codes_are_packed_as_given_with_their_sums() {
    let (k, n) = (67, 70);
    let w = codes(k * n, 5);
    let scales = pseudo_random(n, 6);
    let p = pack_codes(&w, &scales, k, n).unwrap();
    assert_eq!((p.k, p.n, p.data.len()), (k, n, packed_len(k, n)));
    assert_eq!(p.scales, scales);
    assert!(w.contains(&-128) && w.contains(&127));
    for c in 0..n {
        let mut sum = 0;
        for kk in 0..k {
            assert_eq!(code_at(&p, kk, c), w[kk * n + c], "code {kk}, {c}");
            sum += w[kk * n + c] as i32;
        }
        assert_eq!(p.col_sums[c], sum, "column sum {c}");
    }
    // Everything past k = 67 and n = 70 is a zero code: padded activations add nothing.
    for kk in 0..68 {
        for c in 0..128 {
            if kk >= k || c >= n {
                assert_eq!(code_at(&p, kk, c), 0, "padding at k {kk}, column {c}");
            }
        }
    }
    assert!(p.view().data().len() == p.data.len());
    assert!(pack_codes(&w[1..], &scales, k, n).is_none());
    assert!(pack_codes(&w, &scales[1..], k, n).is_none());
    assert!(pack_codes(&[], &[], MAX_K + 1, 0).is_none());
    assert!(pack_codes(&[], &[], MAX_K, 0).is_some());
    // Columns of -128 throughout at the deepest k: sums of -128 k pass the view's check.
    let deep = pack_codes(&vec![-128; MAX_K], &[1.0], MAX_K, 1).unwrap();
    assert_eq!(deep.col_sums, [-128 * MAX_K as i32]);
    let view = deep.view();
    let other = [2.0];
    assert_eq!(view.with_scales(&other).unwrap().scales(), &other);
    assert!(view.with_scales(&[]).is_none());
}

#[test]
fn every_kernel_equals_the_onnx_formula() {
    let ks = [1, 3, 5, 63, 64, 65, 67, 131];
    let ns = [1, 7, 65, 130];
    let zeros = [0u8, 1, 128, 255];
    for (ki, &k) in ks.iter().enumerate() {
        for (ni, &n) in ns.iter().enumerate() {
            let w = codes(k * n, (k * 31 + n) as u32);
            let mut scales = pseudo_random(n, (k + n) as u32);
            scales.iter_mut().for_each(|s| *s *= 1e-3);
            for rows in [1, 3, 17, 517] {
                let x = bytes(rows * k, (rows * 7 + k) as u32);
                for (zi, &zero) in zeros.iter().enumerate() {
                    // Every epilogue on the small row counts, one in turn on the large one.
                    let turn = (ki + ni + zi) % 7;
                    let one = [turn];
                    let epis: &[usize] = if rows < 100 {
                        &[0, 1, 2, 3, 4, 5, 6]
                    } else {
                        &one
                    };
                    let what = format!("{rows}x{k}x{n}");
                    check(&x, rows, zero, &w, n, &scales, epis, &what);
                }
            }
        }
    }
}

/// The AMX kernel's steps of 64 `k` and its tails, and the ymm kernels' strips, at depths that
/// are and are not whole groups.
#[test]
fn every_kernel_equals_the_onnx_formula_on_tile_tails() {
    for (k, n) in [(4, 17), (68, 70), (100, 1), (770, 33), (771, 64)] {
        let w = codes(k * n, (k * 37 + n) as u32);
        let scales = pseudo_random(n, 3);
        for rows in [16, 49] {
            let x = bytes(rows * k, (rows + k) as u32);
            check(
                &x,
                rows,
                131,
                &w,
                n,
                &scales,
                &[0, 2, 5],
                &format!("{rows}x{k}x{n}"),
            );
        }
    }
}

/// The largest sums the bound allows: `|x - zero| = 255` and codes of -128 or 127 all along the
/// deepest `k`, where any pair sum in i16 or any sum beyond i32 would show.
#[test]
fn extreme_sums_are_exact_at_the_deepest_k() {
    let (rows, n) = (4, 3);
    for k in [MAX_K, MAX_K - 3, 4099] {
        // Rows: all 255, all 0, alternating, mixed; columns: all -128, all 127, mixed.
        let x: Vec<u8> = (0..rows * k)
            .map(|i| match i / k {
                0 => 255,
                1 => 0,
                2 => [0, 255][i % 2],
                _ => (i * 97 % 256) as u8,
            })
            .collect();
        let w: Vec<i8> = (0..k * n)
            .map(|i| match i % n {
                0 => -128,
                1 => 127,
                _ => (i * 89 % 256) as u8 as i8,
            })
            .collect();
        let scales = [1.0, 1.0, 1.0];
        for zero in [0, 255] {
            check(&x, rows, zero, &w, n, &scales, &[0], &format!("k {k}"));
        }
        // The extremes themselves, exactly (1.0 scale: the sums as f32).
        let p = pack_codes(&w, &scales, k, n).unwrap();
        let mut out = vec![0.0; rows * n];
        gemm_u8(&x, rows, 0, p.view(), Epilogue::default(), &mut out);
        assert_eq!(out[0], (-255 * 128 * k as i64) as i32 as f32);
        assert_eq!(out[1], (255 * 127 * k as i64) as f32);
    }
}

/// Rows padded to whole groups read zeros past `k`, so even weights whose padding is not zero (a
/// plan written by something else) give the formula's results.
#[test]
fn padding_adds_nothing_whatever_the_weights_padding_holds() {
    let (rows, k, n) = (5, 7, 9);
    let w = codes(k * n, 41);
    let x = bytes(rows * k, 42);
    let scales = pseudo_random(n, 43);
    let mut p = pack_codes(&w, &scales, k, n).unwrap();
    for c in 0..n {
        p.data[c * 4 + 256 + 3] = -77; // k = 7, the padding of the second group
    }
    let mut want = vec![0.0; rows * n];
    onnx_reference(
        &x,
        rows,
        200,
        &w,
        n,
        &scales,
        Epilogue::default(),
        &mut want,
    );
    for kernel in kernels() {
        let mut got = vec![0.0; rows * n];
        gemm_u8_with(
            kernel,
            &x,
            rows,
            200,
            p.view(),
            Epilogue::default(),
            &mut got,
        );
        assert_eq!(got, want, "{kernel:?}");
    }
}

#[test]
fn non_finite_scales_and_empty_shapes() {
    let (rows, k, n) = (3, 9, 70);
    let w = codes(k * n, 51);
    let x = bytes(rows * k, 52);
    let mut scales = pseudo_random(n, 53);
    scales[3] = f32::NAN;
    scales[65] = f32::INFINITY;
    scales[66] = 0.0;
    check(
        &x,
        rows,
        7,
        &w,
        n,
        &scales,
        &[0, 1, 2, 3, 4, 5, 6],
        "non-finite",
    );
    check(&[], 0, 7, &w, n, &scales, &[0, 1], "no rows");
    let p = pack_codes(&[], &[1.0; 5], 0, 5).unwrap();
    check(&[], 3, 7, &[], 5, &p.scales, &[0, 1, 2, 4], "k 0");
}

#[test]
fn threads_give_the_serial_results() {
    for (rows, k, n) in [(517, 301, 130), (300, 200, 64), (1, 513, 3072)] {
        let x = bytes(rows * k, 61);
        let w = pack_codes(&codes(k * n, 62), &pseudo_random(n, 63), k, n).unwrap();
        let bias = pseudo_random(n, 64);
        for epi in epilogues(&bias) {
            for kernel in kernels() {
                let mut serial = pseudo_random(rows * n, 65);
                let init = serial.clone();
                crate::threads::serial(|| {
                    gemm_u8_with(kernel, &x, rows, 99, w.view(), epi, &mut serial)
                });
                for threads in [2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = init.clone();
                    pool.install(|| gemm_u8_with(kernel, &x, rows, 99, w.view(), epi, &mut got));
                    assert!(
                        got.iter().zip(&serial).all(|(&a, &b)| same(a, b)),
                        "{kernel:?} {rows}x{k}x{n} {epi:?} on {threads} threads"
                    );
                }
            }
        }
    }
}
