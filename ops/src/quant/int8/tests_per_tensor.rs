//! ONNX QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear per tensor: the operators'
//! examples and backend test cases, and every instruction set this CPU has against the
//! definitions written out here, bit for bit.

use super::per_tensor::{self, Code, Width};
use super::*;
use crate::matmul::pseudo_random;

/// QuantizeLinear as the operator defines it: the quotient rounded half to even, the zero point
/// added, then saturated; NaN gives the bottom code (this crate's choice).
fn reference_code(v: f32, scale: f32, zero: i32, min: i32, max: i32) -> i32 {
    let q = (v / scale).round_ties_even() + zero as f32;
    if q.is_nan() || q < min as f32 {
        min
    } else if q > max as f32 {
        max
    } else {
        q as i32
    }
}

/// DynamicQuantizeLinear as the operator defines it (with the choices documented on
/// [`dynamic_quantize_u8`]): `(scale, zero, codes)`.
fn reference_dynamic(x: &[f32]) -> (f32, u8, Vec<u8>) {
    if x.iter().any(|v| !v.is_finite()) {
        return (f32::NAN, 0, vec![0; x.len()]);
    }
    let x_max = x.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    let x_min = x.iter().fold(0.0f32, |m, &v| if v < m { v } else { m });
    let mut scale = (x_max - x_min) / 255.0;
    if scale == 0.0 {
        scale = 1.0;
    }
    let zero = reference_code(0.0 - x_min / scale, 1.0, 0, 0, 255);
    let codes = x
        .iter()
        .map(|&v| reference_code(v, scale, zero, 0, 255) as u8)
        .collect();
    (scale, zero as u8, codes)
}

/// Bit for bit, NaN payloads aside.
fn identical(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn the_operators_examples() {
    // QuantizeLinear and DequantizeLinear, the operators' examples.
    let mut y = [0u8; 6];
    quantize_u8(&[0.0, 2.0, 3.0, 1000.0, -254.0, -1000.0], 2.0, 128, &mut y);
    assert_eq!(y, [128, 129, 130, 255, 1, 0]);
    let mut y = [0i8; 6];
    quantize_i8(&[0.0, 2.0, 3.0, 1000.0, -254.0, -1000.0], 2.0, 1, &mut y);
    assert_eq!(y, [1, 2, 3, 127, -126, -128]);
    let mut x = [0.0f32; 4];
    dequantize_u8(&[0, 3, 128, 255], 2.0, 128, &mut x);
    assert_eq!(x, [-256.0, -250.0, 0.0, 254.0]);
    let mut x = [0.0f32; 4];
    dequantize_i8(&[-30, -3, 100, 127], 2.0, -10, &mut x);
    assert_eq!(x, [-40.0, 14.0, 220.0, 274.0]);

    // DynamicQuantizeLinear, the backend tests. 0.5 / 0.019607844 is 25.4999991 exactly but 25.5
    // as an f32 quotient, which rounds to 26: code 179, as the backend test expects (the exact
    // quotient would give 178).
    let cases: [(&[f32], f32, u8, &[u8]); 3] = [
        (
            &[0.0, 2.0, -3.0, -2.5, 1.34, 0.5],
            0.019_607_844,
            153,
            &[153, 255, 0, 26, 221, 179],
        ),
        // max adjusted to 0
        (
            &[-1.0, -2.1, -1.3, -2.5, -3.34, -4.0],
            0.015_686_275,
            255,
            &[191, 121, 172, 96, 42, 0],
        ),
        // min adjusted to 0
        (
            &[
                1.0, 2.1, 1.3, 2.5, 3.34, 4.0, 1.5, 2.6, 3.9, 4.0, 3.0, 2.345,
            ],
            0.015_686_275,
            0,
            &[64, 134, 83, 159, 213, 255, 96, 166, 249, 255, 191, 149],
        ),
    ];
    for (x, scale, zero, codes) in cases {
        let mut y = vec![0u8; x.len()];
        assert_eq!(dynamic_quantize_u8(x, &mut y), (scale, zero), "{x:?}");
        assert_eq!(y, codes, "{x:?}");
    }
}

#[test]
fn ties_round_to_even() {
    // Scale 1: the quotients are the values.
    let x = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5];
    let mut y = [0u8; 8];
    quantize_u8(&x, 1.0, 128, &mut y);
    assert_eq!(y, [128, 130, 130, 128, 126, 126, 254, 0]);
    let mut y = [0i8; 8];
    quantize_i8(&x, 1.0, 0, &mut y);
    assert_eq!(y, [0, 2, 2, 0, -2, -2, 126, -128]);
    // A range of 255 gives scale 1; x_min = -100.5 puts the zero point on a tie (100.5 -> 100),
    // and x_max another (154.5 -> 154).
    let x = [-100.5, 154.5, 0.5, 1.5, 2.5, -0.5, -99.5];
    let mut y = [0u8; 7];
    assert_eq!(dynamic_quantize_u8(&x, &mut y), (1.0, 100));
    assert_eq!(y, [0, 254, 100, 102, 102, 100, 0]);
}

#[test]
fn dynamic_quantisation_where_the_definition_is_open() {
    let run = |x: &[f32]| {
        let mut y = vec![7u8; x.len()];
        let (s, z) = dynamic_quantize_u8(x, &mut y);
        (s, z, y)
    };
    // All zeros, nothing, and a scale that underflows: 1.0, as ONNX Runtime makes it.
    assert_eq!(run(&[0.0, -0.0, 0.0]), (1.0, 0, vec![0, 0, 0]));
    assert_eq!(run(&[]), (1.0, 0, vec![]));
    assert_eq!(run(&[1e-45, -1e-45]).2, vec![0, 0]);
    assert_eq!(run(&[1e-45]).0, 1.0);
    // Non-finite values: scale NaN, codes and zero point 0.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (s, z, y) = run(&[1.0, bad, -2.0]);
        assert!(s.is_nan() && z == 0 && y == [0, 0, 0], "{bad}");
    }
    // A range that overflows: scale infinity, as the formula gives.
    assert_eq!(run(&[3e38, -3e38, 1.0]), (f32::INFINITY, 0, vec![0, 0, 0]));
    // Subnormal scales follow the formula.
    let x = [1e-40, -3e-41, 5e-41];
    let (s, z, codes) = reference_dynamic(&x);
    assert!(s > 0.0 && s < f32::MIN_POSITIVE);
    assert_eq!(run(&x), (s, z, codes));
}

/// Values for the property tests: mixed signs, ties at scale 1, extremes and non-finite values.
fn values(len: usize, case: usize) -> Vec<f32> {
    let mut x = pseudo_random(len, (len * 7 + case) as u32);
    match case {
        1 => x
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 600) as f32 * 0.5 - 150.0),
        2 if len > 0 => x[len - 1] = 1e30,
        3 if len > 2 => {
            x[len / 2] = f32::NAN;
            x[1] = f32::NEG_INFINITY;
            x[0] = f32::INFINITY;
        }
        4 => x.iter_mut().for_each(|v| *v = v.abs() * 1e-3 + 0.5),
        5 => x.iter_mut().for_each(|v| *v *= -1e-39),
        _ => {}
    }
    x
}

fn lengths() -> impl Iterator<Item = usize> {
    (0..70).chain([255, 1001, 70_001])
}

#[test]
fn every_width_quantises_as_the_definition() {
    for len in lengths() {
        for case in 0..6 {
            let x = values(len, case);
            for (scale, zero) in [(0.01, 0), (1.0, 128), (0.5, 255), (3e-3, 17), (0.0, 3)] {
                let want: Vec<u8> = x
                    .iter()
                    .map(|&v| reference_code(v, scale, zero, 0, 255) as u8)
                    .collect();
                let want_i8: Vec<i8> = x
                    .iter()
                    .map(|&v| reference_code(v, scale, zero - 128, -128, 127) as i8)
                    .collect();
                for width in Width::available() {
                    let mut got = vec![0u8; len];
                    per_tensor::quantize(width, &x, scale, zero as u8, &mut got);
                    assert_eq!(got, want, "{width:?} u8 length {len} case {case} {scale}");
                    let mut got = vec![0i8; len];
                    per_tensor::quantize(width, &x, scale, (zero - 128) as i8, &mut got);
                    assert_eq!(
                        got, want_i8,
                        "{width:?} i8 length {len} case {case} {scale}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_width_dequantises_as_the_definition() {
    fn check<T: Code + std::fmt::Debug>(codes: &[T], scale: f32, zero: T) {
        let want: Vec<f32> = codes
            .iter()
            .map(|&q| (q.value() - zero.value()) as f32 * scale)
            .collect();
        for width in Width::available() {
            let mut got = vec![0.0f32; codes.len()];
            per_tensor::dequantize(width, codes, scale, zero, &mut got);
            assert!(
                got.iter().zip(&want).all(|(&a, &b)| identical(a, b)),
                "{width:?} {} codes, zero {zero:?}, scale {scale}",
                codes.len()
            );
        }
    }
    for len in lengths() {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
        let signed: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
        for scale in [0.1, 3e-3, f32::INFINITY, f32::NAN] {
            for zero in [0u8, 1, 128, 255] {
                check(&bytes, scale, zero);
                check(&signed, scale, zero as i8);
            }
        }
    }
}

#[test]
fn every_width_dynamically_quantises_as_the_definition() {
    for len in lengths() {
        for case in 0..6 {
            let x = values(len, case);
            let (scale, zero, codes) = reference_dynamic(&x);
            for width in Width::available() {
                let mut got = vec![9u8; len];
                let (s, z) = per_tensor::dynamic_quantize(width, &x, &mut got);
                assert!(
                    identical(s, scale) && z == zero,
                    "{width:?} length {len} case {case}: ({s}, {z}) vs ({scale}, {zero})"
                );
                assert_eq!(got, codes, "{width:?} length {len} case {case}");
            }
        }
    }
}

#[test]
fn threads_give_the_serial_results() {
    let x = values(200_003, 0);
    let mut serial = vec![0u8; x.len()];
    let s = crate::threads::serial(|| dynamic_quantize_u8(&x, &mut serial));
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut got = vec![0u8; x.len()];
        assert_eq!(pool.install(|| dynamic_quantize_u8(&x, &mut got)), s);
        assert_eq!(got, serial);
        let mut back = vec![0.0; x.len()];
        pool.install(|| dequantize_u8(&got, s.0, s.1, &mut back));
        // Dequantised within half a step (the range includes every value).
        assert!(x
            .iter()
            .zip(&back)
            .all(|(a, b)| (a - b).abs() <= s.0 * 0.5001));
    }
}
