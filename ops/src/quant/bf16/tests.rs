use super::*;
use crate::activation::Activation;
use crate::matmul::pseudo_random;

/// Packed index of `w[i][c]` as the module documentation defines it.
fn packed_index(k: usize, i: usize, c: usize) -> usize {
    let pairs = k.div_ceil(2);
    (((c / 64) * pairs + i / 2) * 64 + c % 64) * 2 + i % 2
}

#[test]
fn packing_follows_the_documented_layout_and_pads_with_zeros() {
    for &(k, n) in &[(1, 1), (3, 2), (4, 64), (5, 65), (2, 130), (0, 3), (3, 0)] {
        let w: Vec<f32> = (0..k * n).map(|v| v as f32 + 1.0).collect();
        let p = pack(&w, k, n);
        assert_eq!(p.len(), packed_len(k, n));
        assert_eq!(p.len(), n.div_ceil(64) * k.div_ceil(2) * 128, "{k}x{n}");
        let mut real = vec![false; p.len()];
        for i in 0..k {
            for c in 0..n {
                let at = packed_index(k, i, c);
                assert_eq!(p[at], Bf16::from_f32(w[i * n + c]), "{k}x{n} [{i}][{c}]");
                real[at] = true;
            }
        }
        for (v, real) in p.iter().zip(&real) {
            assert!(*real || *v == Bf16(0), "{k}x{n}: padding is zero");
        }
    }
    // Spelled out: k = 3, n = 2 is one panel of two pairs, the second half padding.
    let p = pack(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2);
    let at = |g: usize, j: usize, t: usize| p[(g * 64 + j) * 2 + t].to_f32();
    assert_eq!(
        [at(0, 0, 0), at(0, 0, 1), at(0, 1, 0), at(0, 1, 1)],
        [1.0, 3.0, 2.0, 4.0]
    );
    assert_eq!(
        [at(1, 0, 0), at(1, 0, 1), at(1, 1, 0), at(1, 1, 1)],
        [5.0, 0.0, 6.0, 0.0]
    );
    assert_eq!(at(0, 2, 0), 0.0);
}

#[test]
fn packing_rounds_to_nearest_even() {
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even pattern.
    let p = pack(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0], 1, 2);
    assert_eq!(p[0].to_f32(), 1.0);
    assert_eq!(p[2].to_f32(), 1.0 + 4.0 / 256.0);
}

#[test]
fn weights_must_fit_their_shape() {
    let p = pack(&[0.5; 5 * 70], 5, 70);
    assert!(Bf16Weights::new(&p, 5, 70).is_some());
    assert!(
        Bf16Weights::new(&p, 6, 128).is_some(),
        "the same packed length"
    );
    assert!(Bf16Weights::new(&p, 7, 70).is_none());
    assert!(Bf16Weights::new(&p, 5, 129).is_none());
    assert!(Bf16Weights::new(&p[1..], 5, 70).is_none());
    assert!(Bf16Weights::new(&[], 0, 70).is_some());
    assert!(Bf16Weights::new(&[], usize::MAX, usize::MAX).is_none());
}

/// The epilogues the kernels are checked with.
fn epilogues(bias: &[f32]) -> Vec<Epilogue<'_>> {
    vec![
        Epilogue::default(),
        Epilogue {
            bias: Some(bias),
            ..Default::default()
        },
        Epilogue {
            bias: Some(bias),
            activation: Some(Activation::GeluErf),
            accumulate: false,
        },
        Epilogue {
            bias: None,
            activation: Some(Activation::Relu),
            accumulate: true,
        },
        Epilogue {
            bias: Some(bias),
            activation: Some(Activation::GeluTanh),
            accumulate: true,
        },
    ]
}

/// Every kernel against the reference on one shape and epilogue.
///
/// Each product of two bf16 is exact in f32, so kernels differ from the reference (summed in f64)
/// only by rounding the sums of at most `k + 1` terms in f32, in whatever order: at most
/// `(k + 1) 2^-24 Σ|x||w|` (to first order, given 25% here), plus a few roundings of the
/// magnitudes the epilogue adds.
fn check_kernels(rows: usize, k: usize, n: usize, epi_index: usize) {
    let x = pseudo_random(rows * k, 1 + rows as u32 + k as u32);
    let w = pseudo_random(k * n, 2 + n as u32);
    let bias = pseudo_random(n, 3);
    let old = pseudo_random(rows * n, 4);
    let epi = epilogues(&bias)[epi_index];
    let packed = pack(&w, k, n);
    let weights = Bf16Weights::new(&packed, k, n).expect("packed length");
    let mut want = old.clone();
    gemm_bf16_reference(&x, rows, weights, epi, &mut want);
    // Σ|x||w| and the sum itself, per output.
    let mut abs = vec![0.0f64; rows * n];
    let mut sum = vec![0.0f64; rows * n];
    for r in 0..rows {
        for i in 0..k {
            let xv = Bf16::from_f32(x[r * k + i]).to_f32() as f64;
            for c in 0..n {
                let wv = Bf16::from_f32(w[i * n + c]).to_f32() as f64;
                abs[r * n + c] += (xv * wv).abs();
                sum[r * n + c] += xv * wv;
            }
        }
    }
    for kernel in kernels() {
        let mut got = old.clone();
        gemm_bf16_with(kernel, &x, rows, weights, epi, &mut got);
        for i in 0..rows * n {
            let b = epi.bias.map_or(0.0, |b| b[i % n]) as f64;
            let around = sum[i].abs() + b.abs() + old[i].abs() as f64 + want[i].abs() as f64;
            let tol =
                1.25 * (k as f64 + 1.0) * 2f64.powi(-24) * abs[i] + 2f64.powi(-21) * around + 1e-30;
            let err = (got[i] as f64 - want[i] as f64).abs();
            assert!(
                err <= tol,
                "{kernel:?} {rows}x{k}x{n} epilogue {epi:?}, element {i}: {} vs {} (tolerance {tol:e})",
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn every_kernel_agrees_with_the_reference_on_odd_shapes() {
    for k in [1, 2, 3, 63, 64, 65, 767] {
        for n in [1, 7, 63, 64, 65, 130] {
            for rows in [1, 3, 7] {
                for e in 0..epilogues(&[]).len() {
                    check_kernels(rows, k, n, e);
                }
            }
        }
    }
}

#[test]
fn every_kernel_agrees_with_the_reference_on_many_rows() {
    for k in [1, 2, 3, 63, 64, 65, 767] {
        for n in [1, 7, 65, 130] {
            check_kernels(517, k, n, 4);
        }
    }
    for e in 0..epilogues(&[]).len() {
        check_kernels(517, 65, 130, e);
    }
    // Long rows: the activations of a task's block of rows fill its budget, and the rows take
    // several blocks.
    check_kernels(100, 4097, 70, 4);
}

/// The tails of the AMX tiles: pairs of `k` not a multiple of 16 (odd `k` too), rows not a
/// multiple of 16, columns not a multiple of 16 or 64, with every epilogue.
#[test]
fn every_kernel_agrees_with_the_reference_on_tile_tails() {
    let epilogues = epilogues(&[]).len();
    for k in [1, 2, 3, 33, 64, 100, 770] {
        for n in [1, 17, 70] {
            for rows in [1, 3, 17] {
                check_kernels(rows, k, n, (rows + k + n) % epilogues);
            }
        }
    }
    for e in 0..epilogues {
        check_kernels(517, 100, 70, e);
        check_kernels(17, 770, 17, e);
    }
    check_kernels(517, 770, 70, 2);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn amx_comes_first_where_it_runs() {
    let kernels = kernels();
    assert_eq!(amx::detected(), kernels[0].0 == Kind::Amx, "{kernels:?}");
    assert_eq!(
        amx::detected(),
        format!("{:?}", kernels[0]) == "amx-bf16",
        "{kernels:?}"
    );
}

#[test]
fn empty_products_still_apply_the_epilogue() {
    let bias = [0.5f32, -1.0, 2.0];
    for kernel in kernels() {
        let mut out = vec![1.0f32; 2 * 3];
        let epi = Epilogue {
            bias: Some(&bias),
            activation: Some(Activation::Relu),
            accumulate: true,
        };
        gemm_bf16_with(
            kernel,
            &[],
            2,
            Bf16Weights::new(&[], 0, 3).unwrap(),
            epi,
            &mut out,
        );
        assert_eq!(out, [1.5, 1.0, 3.0, 1.5, 1.0, 3.0], "{kernel:?}");
        let mut none: Vec<f32> = vec![];
        gemm_bf16_with(
            kernel,
            &[],
            0,
            Bf16Weights::new(&[], 5, 0).unwrap(),
            Epilogue::default(),
            &mut none,
        );
    }
}

/// Activations are rounded to the nearest bf16, ties to even, before they are multiplied: with
/// identity weights each output is its input rounded.
#[test]
fn activations_round_to_nearest_even() {
    let u = 1.0 / 256.0; // Half a bf16 step at 1.
    let x = [
        1.0 + u,          // tie: down to the even 1
        1.0 + 3.0 * u,    // tie: up to the even 1 + 4u
        -(1.0 + u),       // tie, negative
        1.0 + 0.9 * u,    // below half: down
        1.0 + 1.1 * u,    // above half: up
        -(2.0 + 6.0 * u), // tie at 2, where a step is 4u: up to the even 2 + 8u
        -(1.0 + 3.0 * u), // tie, negative, up in magnitude
        0.1,
    ];
    let want = [
        1.0,
        1.0 + 4.0 * u,
        -1.0,
        1.0,
        1.0 + 2.0 * u,
        -(2.0 + 8.0 * u),
        -(1.0 + 4.0 * u),
        Bf16::from_f32(0.1).to_f32(),
    ];
    let k = x.len();
    let eye: Vec<f32> = (0..k * k).map(|i| (i / k == i % k) as u8 as f32).collect();
    let packed = pack(&eye, k, k);
    let w = Bf16Weights::new(&packed, k, k).unwrap();
    for kernel in kernels() {
        let mut out = vec![0.0; k];
        gemm_bf16_with(kernel, &x, 1, w, Epilogue::default(), &mut out);
        assert_eq!(out, want, "{kernel:?}");
    }
}

/// Against exact f64 products of the unrounded values: each operand is within 2^-9 (relative) of
/// its bf16, so each product within `2^-8 + 2^-18`, and the f32 sums add at most `(k + 1) 2^-24`
/// of `Σ|x||w|`. On positive data the rounding errors must also cancel on average (truncating
/// instead of rounding would lose about 2^-8 of every sum).
#[test]
fn errors_against_f64_are_those_of_rounding_both_operands() {
    let (rows, k, n) = (37, 767, 130);
    let x = pseudo_random(rows * k, 11);
    let w = pseudo_random(k * n, 12);
    let positive = |v: &[f32]| v.iter().map(|v| (v + 1.0) / 2.0).collect::<Vec<f32>>();
    for (x, w, signed) in [
        (x.clone(), w.clone(), true),
        (positive(&x), positive(&w), false),
    ] {
        let packed = pack(&w, k, n);
        let weights = Bf16Weights::new(&packed, k, n).unwrap();
        for kernel in kernels() {
            let mut got = vec![0.0; rows * n];
            gemm_bf16_with(kernel, &x, rows, weights, Epilogue::default(), &mut got);
            let mut mean_relative = 0.0;
            for r in 0..rows {
                for c in 0..n {
                    let (mut exact, mut abs) = (0.0f64, 0.0f64);
                    for i in 0..k {
                        let p = x[r * k + i] as f64 * w[i * n + c] as f64;
                        exact += p;
                        abs += p.abs();
                    }
                    let bound = (2f64.powi(-8) + 2f64.powi(-18) + (k + 1) as f64 * 2f64.powi(-24))
                        * (1.0 + 2f64.powi(-7))
                        * abs;
                    let err = got[r * n + c] as f64 - exact;
                    assert!(
                        err.abs() <= bound,
                        "{kernel:?} [{r}][{c}]: {err:e} > {bound:e}"
                    );
                    mean_relative += err / abs / (rows * n) as f64;
                }
            }
            if !signed {
                assert!(
                    mean_relative.abs() < 2f64.powi(-12),
                    "{kernel:?}: errors do not cancel: mean {mean_relative:e} of Σ|x||w|"
                );
            }
        }
    }
}

#[test]
fn parallel_pools_compute_what_one_thread_does() {
    for &(rows, k, n) in &[
        (517, 65, 130),
        (130, 300, 200),
        (1, 3072, 130),
        (96, 767, 64),
        (100, 4097, 70),
    ] {
        let x = pseudo_random(rows * k, 21);
        let w = pseudo_random(k * n, 22);
        let bias = pseudo_random(n, 23);
        let old = pseudo_random(rows * n, 24);
        let packed = pack(&w, k, n);
        let weights = Bf16Weights::new(&packed, k, n).unwrap();
        let epi = epilogues(&bias)[4];
        for kernel in kernels() {
            let mut serial = old.clone();
            crate::threads::serial(|| gemm_bf16_with(kernel, &x, rows, weights, epi, &mut serial));
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut got = old.clone();
                pool.install(|| gemm_bf16_with(kernel, &x, rows, weights, epi, &mut got));
                assert_eq!(
                    got, serial,
                    "{kernel:?} {rows}x{k}x{n} on {threads} threads"
                );
            }
        }
    }
}

#[test]
fn non_finite_inputs_give_defined_results() {
    let (rows, k, n) = (7, 5, 70);
    let mut x = pseudo_random(rows * k, 31);
    x[0] = f32::NAN;
    x[k] = f32::INFINITY;
    x[2 * k] = f32::MAX;
    x[3 * k] = -1e-45;
    let mut w = pseudo_random(k * n, 32);
    w[3] = f32::NEG_INFINITY;
    w[n + 4] = f32::NAN;
    let packed = pack(&w, k, n);
    let weights = Bf16Weights::new(&packed, k, n).unwrap();
    let mut want = vec![0.0; rows * n];
    gemm_bf16_reference(&x, rows, weights, Epilogue::default(), &mut want);
    for kernel in kernels() {
        let mut got = vec![0.0; rows * n];
        gemm_bf16_with(kernel, &x, rows, weights, Epilogue::default(), &mut got);
        // A NaN activation reaches every output of its row.
        assert!(got[..n].iter().all(|v| v.is_nan()), "{kernel:?}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.is_finite(),
                w.is_finite(),
                "{kernel:?} element {i}: {g} vs {w}"
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_vector_conversion_rounds_as_the_scalar_one() {
    if !dpbf16::detected() {
        return;
    }
    // Random bit patterns (normal, infinite and NaN) in rows of lengths around the 32-value step.
    let mut s = 7u32;
    for k in [1usize, 2, 15, 16, 17, 31, 32, 33, 64, 95] {
        let rows = 9;
        let x: Vec<f32> = (0..rows * k)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let v = f32::from_bits(s);
                // Subnormals are read as zero by the instruction.
                if v.is_subnormal() {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let kp = k.div_ceil(2);
        let mut got = vec![0xdead_beef; rows * kp];
        dpbf16::convert(&x, k, &mut got);
        let mut want = vec![0; rows * kp];
        widen::convert(&x, k, &mut want);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            for half in [0, 16] {
                let (g, w) = (Bf16((g >> half) as u16), Bf16((w >> half) as u16));
                // NaN payloads may differ.
                if !(g.to_f32().is_nan() && w.to_f32().is_nan()) {
                    assert_eq!(g, w, "k {k}, pair {i}");
                }
            }
        }
    }
}
