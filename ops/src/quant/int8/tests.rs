use super::*;
use crate::matmul::pseudo_random;

/// Code `q[kk][c]` of packed weights, located from the layout's definition.
pub(super) fn code_at(p: &PackedI8, kk: usize, c: usize) -> i8 {
    let groups = p.k.div_ceil(4);
    let panel = c / 64;
    p.data[panel * groups * 256 + (kk / 4) * 256 + (c % 64) * 4 + kk % 4]
}

/// Equal values, or both NaN (`-0.0 == 0.0`: ReLU may keep either).
pub(super) fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn quantized(x: &[f32], rows: usize, k: usize) -> QuantRows {
    let mut q = QuantRows::default();
    q.quantize(x, rows, k);
    q
}

#[test]
fn weights_are_quantised_per_column_and_packed() {
    let (k, n) = (67, 70);
    let mut w = pseudo_random(k * n, 7);
    for kk in 0..k {
        w[kk * n + 5] = 0.0; // a zero column
        w[kk * n + 6] *= 1e-3; // a small one
    }
    w[3 * n + 9] = -4.0; // a column whose largest magnitude is negative
    let p = quantize_pack(&w, k, n);
    assert_eq!(p.data.len(), 2 * 17 * 256);
    assert_eq!(packed_len(k, n), p.data.len());
    assert_eq!((p.k, p.n, p.scales.len(), p.col_sums.len()), (k, n, n, n));
    for c in 0..n {
        let max = (0..k).map(|kk| w[kk * n + c].abs()).fold(0.0f32, f32::max);
        let scale = max / 127.0;
        assert_eq!(p.scales[c], scale, "column {c}");
        let mut sum = 0;
        for kk in 0..k {
            let want = if scale == 0.0 {
                0
            } else {
                (w[kk * n + c] / scale).round_ties_even() as i32
            };
            assert!((-127..=127).contains(&want));
            assert_eq!(code_at(&p, kk, c) as i32, want, "code {kk}, {c}");
            // Dequantised within half a step.
            let back = code_at(&p, kk, c) as f32 * scale;
            assert!((back - w[kk * n + c]).abs() <= scale * 0.5001);
            sum += want;
        }
        assert_eq!(p.col_sums[c], sum, "column sum {c}");
    }
    assert_eq!(code_at(&p, 3, 9), -127);
    assert!((0..k).all(|kk| code_at(&p, kk, 5) == 0) && p.scales[5] == 0.0);
    // Padding: k = 67 in the last group of 4, columns 70..128 of the last panel.
    for g in 0..17 {
        for j in 0..64 {
            for t in 0..4 {
                let (kk, c) = (4 * g + t, 64 + j);
                let byte = p.data[17 * 256 + g * 256 + j * 4 + t];
                if kk >= k || c >= n {
                    assert_eq!(byte, 0, "padding at k {kk}, column {c}");
                }
            }
        }
    }
    assert!(p.view().data().len() == p.data.len());
}

#[test]
fn codes_round_half_to_even_and_never_reach_minus_128() {
    // Scale 1: the codes are the values rounded.
    let w = [127.0, 0.5, 1.5, 2.5, -2.5, -0.5, 126.5, -127.0];
    let p = quantize_pack(&w, 8, 1);
    let codes: Vec<i8> = (0..8).map(|kk| code_at(&p, kk, 0)).collect();
    assert_eq!(codes, [127, 0, 2, 2, -2, 0, 126, -127]);
    assert_eq!(p.col_sums[0], 127 + 2 + 2 - 2 + 126 - 127);
    let q = quantized(&w, 1, 8);
    assert_eq!(q.scales(), &[1.0]);
    assert_eq!(q.codes(), &[255, 128, 130, 130, 126, 128, 254, 1]);
}

#[test]
fn rows_are_quantised_per_row_with_padding() {
    let (rows, k) = (5, 1001);
    let mut x = pseudo_random(rows * k, 3);
    x[k..2 * k].fill(0.0);
    x[2 * k + 17] = f32::NAN;
    x[3 * k + 999] = f32::NEG_INFINITY;
    let q = quantized(&x, rows, k);
    assert_eq!((q.rows(), q.k(), q.stride()), (rows, k, 1004));
    assert_eq!(q.codes().len(), rows * 1004);
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        let codes = &q.codes()[r * 1004..(r + 1) * 1004];
        assert_eq!(&codes[k..], &[128; 3], "padding of row {r}");
        let s = q.scales()[r];
        match r {
            1 => assert_eq!(s, 0.0),
            2 | 3 => assert!(s.is_nan()),
            _ => {
                let max = row.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
                assert_eq!(s, max / 127.0);
            }
        }
        for (i, (&v, &c)) in row.iter().zip(codes).enumerate() {
            let want = if s > 0.0 {
                ((v / s).round_ties_even() + 128.0) as u8
            } else {
                128
            };
            assert_eq!(c, want, "row {r} value {i}");
        }
    }
    // Reuse with a smaller shape.
    let mut q = q;
    q.quantize(&[1.0, -2.0], 1, 2);
    assert_eq!(
        (q.codes(), q.scales()),
        (&[192u8, 1, 128, 128][..], &[2.0 / 127.0][..])
    );
}

/// The vectorised passes over a row, each instruction set this CPU has, against the scalar
/// definition: every length around the vector widths, ties, extremes and non-finite values.
#[test]
fn every_row_pass_equals_the_scalar_definition() {
    type Max = fn(&[f32]) -> u32;
    type Encode = fn(&[f32], f32, &mut [u8]);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut passes: Vec<(&str, Max, Encode)> =
        vec![("scalar", rows::max_abs_bits, rows::encode_scalar)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            passes.push((
                "avx512",
                |x| unsafe { rows_x86::max_abs_bits_avx512(x) },
                |x, s, c| unsafe { rows_x86::encode_avx512(x, s, c) },
            ));
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected.
            passes.push((
                "avx2",
                |x| unsafe { rows_x86::max_abs_bits_avx2(x) },
                |x, s, c| unsafe { rows_x86::encode_avx2(x, s, c, rows::encode_scalar) },
            ));
        }
    }
    let base = pseudo_random(1001, 9);
    for len in (0..100).chain([1001]) {
        for case in 0..4 {
            let mut x = base[..len].to_vec();
            match case {
                // Scale 1 (127 first) and ties at every half.
                1 => x.iter_mut().enumerate().for_each(|(i, v)| {
                    *v = if i == 0 {
                        127.0
                    } else {
                        (i % 255) as f32 * 0.5 - 63.5
                    }
                }),
                2 if len > 0 => x[len - 1] = 1e30,
                3 if len > 0 => x[len / 2] = f32::NAN,
                _ => {}
            }
            let want_max = x
                .iter()
                .map(|v| v.to_bits() & 0x7fff_ffff)
                .max()
                .unwrap_or(0);
            let scale = f32::from_bits(want_max) / 127.0;
            let want: Vec<u8> = x
                .iter()
                .map(|&v| ((v / scale).round_ties_even().clamp(-127.0, 127.0) + 128.0) as u8)
                .collect();
            for (name, max, encode) in &passes {
                assert_eq!(max(&x), want_max, "{name} max, length {len} case {case}");
                if scale > 0.0 && scale.is_finite() {
                    let mut got = vec![0u8; len];
                    encode(&x, scale, &mut got);
                    assert_eq!(got, want, "{name} codes, length {len} case {case}");
                }
            }
        }
    }
}

/// Every epilogue the kernels distinguish.
pub(super) fn epilogues(bias: &[f32]) -> Vec<Epilogue<'_>> {
    let e = |bias, activation, accumulate| Epilogue {
        bias,
        activation,
        accumulate,
    };
    vec![
        e(None, None, false),
        e(Some(bias), None, false),
        e(Some(bias), Some(Activation::GeluErf), false),
        e(None, Some(Activation::Relu), false),
        e(Some(bias), Some(Activation::GeluTanh), true),
        e(Some(bias), Some(Activation::Relu), true),
        e(None, None, true),
    ]
}

/// Every kernel of this CPU against the reference, exactly, on `epis` (indices into
/// [`epilogues`]).
fn check_kernels(x: &QuantRows, w: &PackedI8, epis: &[usize], what: &str) {
    let (rows, n) = (x.rows(), w.n);
    let bias = pseudo_random(n, 11);
    let init = pseudo_random(rows * n, 13);
    let all = epilogues(&bias);
    for &e in epis {
        let epi = all[e];
        let mut want = init.clone();
        gemm_i8_reference(x, w.view(), epi, &mut want);
        for kernel in kernels() {
            let mut got = init.clone();
            gemm_i8_with(kernel, x, w.view(), epi, &mut got);
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    same(g, r),
                    "{kernel:?} {what} epilogue {epi:?}, row {} column {}: {g} vs {r}",
                    i / n,
                    i % n
                );
            }
        }
    }
}

#[test]
fn every_kernel_equals_the_reference_on_odd_sizes() {
    let ks = [1, 3, 5, 63, 64, 65, 767];
    let ns = [1, 7, 63, 64, 65, 130];
    for (ki, &k) in ks.iter().enumerate() {
        for (ni, &n) in ns.iter().enumerate() {
            let w = quantize_pack(&pseudo_random(k * n, (k * 31 + n) as u32), k, n);
            for rows in [1, 3, 7, 517] {
                let x = quantized(&pseudo_random(rows * k, (rows + k) as u32), rows, k);
                // Every epilogue on the small row counts, one in turn on the large one.
                let one = [(ki + ni) % 7];
                let epis: &[usize] = if rows < 100 {
                    &[0, 1, 2, 3, 4, 5, 6]
                } else {
                    &one
                };
                check_kernels(&x, &w, epis, &format!("{rows}x{k}x{n}"));
            }
        }
    }
}

/// The AMX kernel's tails: `k` not a multiple of its 64-deep steps, widths not a multiple of its
/// 16-column tiles, strips of fewer than 16 rows.
#[test]
fn every_kernel_equals_the_reference_on_tile_tails() {
    let ks = [4, 68, 100, 770];
    let ns = [1, 17, 70];
    for (ki, &k) in ks.iter().enumerate() {
        for (ni, &n) in ns.iter().enumerate() {
            let w = quantize_pack(&pseudo_random(k * n, (k * 37 + n) as u32), k, n);
            for rows in [1, 3, 17, 49, 517] {
                let x = quantized(&pseudo_random(rows * k, (rows * 3 + k) as u32), rows, k);
                let one = [(ki + ni + rows) % 7];
                let epis: &[usize] = if rows < 100 {
                    &[0, 1, 2, 3, 4, 5, 6]
                } else {
                    &one
                };
                check_kernels(&x, &w, epis, &format!("{rows}x{k}x{n}"));
            }
        }
    }
}

#[test]
fn kernels_handle_zero_depth_and_empty_shapes() {
    let w = quantize_pack(&[], 0, 5);
    let x = quantized(&[], 3, 0);
    check_kernels(&x, &w, &[0, 1, 2, 4], "3x0x5");
    let w = quantize_pack(&pseudo_random(4 * 3, 1), 4, 3);
    let x = quantized(&[], 0, 4);
    let mut out = [];
    gemm_i8(&x, w.view(), Epilogue::default(), &mut out);
}

/// Codes at ±127 (activations ±1 at scale 1/127, offset codes 1 and 255) everywhere: the largest
/// sums, where `vpmaddubsw` on the offset codes would saturate (255 x 127 x 2 > 32767).
#[test]
fn extreme_codes_do_not_saturate() {
    for k in [64, 767] {
        let (rows, n) = (7, 130);
        let sign = |i: usize, seed: usize| {
            if (i * 2_654_435_761 + seed).rotate_left(7).is_multiple_of(3) {
                -1.0
            } else {
                1.0
            }
        };
        // Rows 0 and 1 all +1 and all -1; weight columns 0 and 1 likewise; the rest mixed.
        let x: Vec<f32> = (0..rows * k)
            .map(|i| match i / k {
                0 => 1.0,
                1 => -1.0,
                _ => sign(i, 1),
            })
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| match i % n {
                0 => 1.0,
                1 => -1.0,
                _ => sign(i, 2),
            })
            .collect();
        let q = quantized(&x, rows, k);
        let p = quantize_pack(&w, k, n);
        for kernel in kernels() {
            let mut out = vec![0.0; rows * n];
            gemm_i8_with(kernel, &q, p.view(), Epilogue::default(), &mut out);
            for r in 0..rows {
                for c in 0..n {
                    let exact: f32 = (0..k).map(|kk| x[r * k + kk] * w[kk * n + c]).sum();
                    let got = out[r * n + c];
                    assert!(
                        (got - exact).abs() <= 1e-5 * k as f32,
                        "{kernel:?} k {k} row {r} column {c}: {got} vs {exact}"
                    );
                }
            }
        }
        check_kernels(&q, &p, &[0, 5], &format!("extreme codes, k {k}"));
    }
}

/// The whole scheme against f64 products of the unquantised values: each output within the bound
/// the rounding of both operands allows, and the typical error that of 8-bit codes.
#[test]
fn the_scheme_is_as_accurate_as_int8_allows() {
    let (rows, k, n) = (37, 300, 70);
    let x = pseudo_random(rows * k, 21);
    let w = pseudo_random(k * n, 22);
    let mut out = vec![0.0; rows * n];
    linear_i8(
        &x,
        rows,
        quantize_pack(&w, k, n).view(),
        Epilogue::default(),
        &mut out,
    );
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        let s = xr.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)) / 127.0;
        let sum_x: f64 = xr.iter().map(|v| v.abs() as f64).sum();
        for c in 0..n {
            let wc: Vec<f64> = (0..k).map(|kk| w[kk * n + c] as f64).collect();
            let scale = wc.iter().fold(0.0f64, |m, v| m.max(v.abs())) / 127.0;
            let sum_w: f64 = wc.iter().map(|v| v.abs()).sum();
            let exact: f64 = xr.iter().zip(&wc).map(|(&a, b)| a as f64 * b).sum();
            let bound = s / 2.0 * sum_w + scale / 2.0 * sum_x + k as f64 * s * scale / 4.0;
            let got = out[r * n + c] as f64;
            assert!(
                (got - exact).abs() <= bound * 1.001 + 1e-6 * exact.abs(),
                "row {r} column {c}: {got} vs {exact}, bound {bound}"
            );
            err2 += (got - exact).powi(2);
            ref2 += exact.powi(2);
        }
    }
    let relative = (err2 / ref2).sqrt();
    assert!(relative < 0.01, "relative RMS error {relative}");
}

#[test]
fn threads_give_the_serial_results() {
    // Many panels; one panel split over row runs; one row over many panels.
    for (rows, k, n) in [(517, 300, 130), (300, 200, 64), (1, 512, 3072)] {
        let x = quantized(&pseudo_random(rows * k, 5), rows, k);
        let w = quantize_pack(&pseudo_random(k * n, 6), k, n);
        let bias = pseudo_random(n, 7);
        for epi in epilogues(&bias) {
            for kernel in kernels() {
                let mut serial = pseudo_random(rows * n, 8);
                let mut threaded = serial.clone();
                crate::threads::serial(|| gemm_i8_with(kernel, &x, w.view(), epi, &mut serial));
                for threads in [2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = threaded.clone();
                    pool.install(|| gemm_i8_with(kernel, &x, w.view(), epi, &mut got));
                    assert!(
                        got.iter().zip(&serial).all(|(&a, &b)| same(a, b)),
                        "{kernel:?} {rows}x{k}x{n} {epi:?} on {threads} threads"
                    );
                }
                threaded.clear();
            }
        }
    }
}

#[test]
fn non_finite_values_give_nan_rows_and_columns() {
    let (rows, k, n) = (4, 9, 70);
    let mut x = pseudo_random(rows * k, 1);
    x[k + 2] = f32::NAN;
    x[2 * k + 8] = f32::INFINITY;
    let mut w = pseudo_random(k * n, 2);
    w[3 * n + 66] = f32::NEG_INFINITY;
    let q = quantized(&x, rows, k);
    let p = quantize_pack(&w, k, n);
    assert!(p.scales[66].is_nan());
    check_kernels(&q, &p, &[0, 1, 2, 3, 4, 5, 6], "non-finite");
    let mut out = vec![0.0; rows * n];
    gemm_i8(&q, p.view(), Epilogue::default(), &mut out);
    for (i, v) in out.iter().enumerate() {
        let (r, c) = (i / n, i % n);
        assert_eq!(
            v.is_nan(),
            r == 1 || r == 2 || c == 66,
            "row {r} column {c}: {v}"
        );
    }
}

#[test]
fn weights_views_check_their_lengths_and_sums() {
    let p = quantize_pack(&pseudo_random(10 * 3, 4), 10, 3);
    let (d, s, c) = (&p.data[..], &p.scales[..], &p.col_sums[..]);
    assert!(I8Weights::new(d, s, c, 10, 3).is_some());
    assert!(I8Weights::new(&d[1..], s, c, 10, 3).is_none());
    assert!(I8Weights::new(d, &s[1..], c, 10, 3).is_none());
    assert!(I8Weights::new(d, s, &c[1..], 10, 3).is_none());
    assert!(I8Weights::new(d, s, c, 13, 3).is_none());
    assert!(I8Weights::new(d, s, c, 12, 3).is_some()); // the same groups
    let wrong = [c[0], 128 * 10 + 1, c[2]];
    assert!(I8Weights::new(d, s, &wrong, 10, 3).is_none());
    let deep = vec![0i8; packed_len(MAX_K + 1, 1)];
    assert!(I8Weights::new(&deep, &[0.0], &[0], MAX_K + 1, 1).is_none());
    assert_eq!(MAX_K, 65_793);
    assert!(255 * 128 * MAX_K as i64 <= i32::MAX as i64);
    assert!(255 * 128 * (MAX_K as i64 + 1) > i32::MAX as i64);
}

#[test]
fn linear_quantises_then_multiplies() {
    let (rows, k, n) = (9, 70, 100);
    let x = pseudo_random(rows * k, 31);
    let p = quantize_pack(&pseudo_random(k * n, 32), k, n);
    let bias = pseudo_random(n, 33);
    let epi = Epilogue {
        bias: Some(&bias),
        activation: Some(Activation::GeluErf),
        accumulate: false,
    };
    let mut got = vec![0.0; rows * n];
    linear_i8(&x, rows, p.view(), epi, &mut got);
    let mut want = vec![0.0; rows * n];
    gemm_i8_reference(&quantized(&x, rows, k), p.view(), epi, &mut want);
    assert_eq!(got, want);
}

#[test]
fn the_best_kernel_comes_first_and_portable_last() {
    let all = kernels();
    assert_eq!(all[0], I8Kernel::best());
    assert_eq!(all.last().unwrap().name(), "portable");
    #[cfg(target_arch = "x86_64")]
    if crate::amx::available(crate::amx::Product::Int8)
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        assert_eq!(all[0].name(), "amx-int8");
    }
}
