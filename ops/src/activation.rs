//! Scalar activation functions, written once so that every op and kernel agrees on them.

use crate::simd::on_best_isa;

/// GELU with the error function: `x * 0.5 * (1 + erf(x / sqrt(2)))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU with the tanh approximation (`gelu_new`, `approximate="tanh"`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

#[inline]
pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The error function as a rational approximation on [-4, 4] (beyond which erf is ±1 in f32), without
/// branches so that loops over slices vectorise; within 1e-6 of the exact value everywhere.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_258_013_06e-10 + 2.770_681_424_959_02e-8;
    p = x2 * p - 2.101_024_020_825_08e-6;
    p = x2 * p - 5.692_506_394_623_46e-5;
    p = x2 * p - 7.349_906_303_268_55e-4;
    p = x2 * p - 2.954_599_808_540_25e-3;
    p = x2 * p - 1.609_603_332_624_15e-2;
    let mut q = x2 * -1.456_607_184_649_96e-5 - 2.133_740_552_789_05e-4;
    q = x2 * q - 1.682_826_974_382_03e-3;
    q = x2 * q - 7.373_329_167_204_68e-3;
    q = x2 * q - 1.426_473_905_141_89e-2;
    x * p / q
}

on_best_isa!(
    /// Applies `act` to `bias[j] + x` for every element `x` in column `j` of the rows of `data` (rows of
    /// `bias.len()` elements, or no bias), vectorised for the machine's widest instruction set.
    pub fn bias_act_rows(act: Activation, data: &mut [f32], bias: Option<&[f32]>) => bias_act_rows_generic
);

/// Applies `act` to `bias[i] + x` for every element `x` of run `i` of `data` (consecutive runs of
/// `run` elements, one per bias entry; or no bias): the same as [`bias_act_rows`] on the transposed
/// layout, where each neuron's values are contiguous.
pub fn bias_act_runs(act: Activation, data: &mut [f32], run: usize, bias: Option<&[f32]>) {
    let Some(bias) = bias else {
        return bias_act_rows(act, data, None);
    };
    if run == 0 {
        return;
    }
    assert_eq!(
        data.len(),
        run * bias.len(),
        "bias_act_runs: one run per bias entry"
    );
    bias_act_runs_widest(act, data, run, bias)
}

on_best_isa!(fn bias_act_runs_widest(act: Activation, data: &mut [f32], run: usize, bias: &[f32]) => bias_act_runs_generic);

#[inline(always)]
fn bias_act_runs_generic(act: Activation, data: &mut [f32], run: usize, bias: &[f32]) {
    macro_rules! each {
        ($f:expr) => {
            for (values, &c) in data.chunks_exact_mut(run).zip(bias) {
                for v in values.iter_mut() {
                    *v = $f(*v + c);
                }
            }
        };
    }
    match act {
        Activation::GeluErf => each!(gelu_erf),
        Activation::GeluTanh => each!(gelu_tanh),
        Activation::Relu => each!(relu),
    }
}

#[inline(always)]
fn bias_act_rows_generic(act: Activation, data: &mut [f32], bias: Option<&[f32]>) {
    // One loop per activation and bias case, so that each inner loop is straight-line code.
    macro_rules! each {
        ($f:expr) => {
            match bias {
                Some(b) if !b.is_empty() => {
                    for row in data.chunks_exact_mut(b.len()) {
                        for (v, &c) in row.iter_mut().zip(b) {
                            *v = $f(*v + c);
                        }
                    }
                }
                _ => {
                    for v in data.iter_mut() {
                        *v = $f(*v);
                    }
                }
            }
        };
    }
    match act {
        Activation::GeluErf => each!(gelu_erf),
        Activation::GeluTanh => each!(gelu_tanh),
        Activation::Relu => each!(relu),
    }
}

/// The activation applied by a feedforward op, as a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::GeluErf => gelu_erf(x),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::Relu => relu(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-neuron runs with a bias each, for every activation, equal the scalar functions.
    #[test]
    fn bias_act_runs_matches_scalar_activation() {
        let (run, neurons) = (19, 5);
        let data: Vec<f32> = (0..run * neurons)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let bias: Vec<f32> = (0..neurons).map(|j| j as f32 * 0.25 - 0.5).collect();
        for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
            let mut got = data.clone();
            bias_act_runs(act, &mut got, run, Some(&bias));
            for (i, (&g, &x)) in got.iter().zip(&data).enumerate() {
                let want = act.apply(x + bias[i / run]);
                assert!(
                    (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{act:?} {i}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn gelu_matches_known_values() {
        // Values of x * Phi(x) from the normal CDF.
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-1.0) + 0.158_655_3).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(relu(-2.0), 0.0);
    }

    #[test]
    fn erf_is_within_1e6_of_libm() {
        let mut worst = 0.0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 1e-6, "max error {worst}");
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn bias_act_rows_applies_bias_per_column() {
        for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
            let data: Vec<f32> = (0..37 * 3).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let bias: Vec<f32> = (0..37).map(|i| i as f32 * 0.01 - 0.2).collect();
            let mut got = data.clone();
            bias_act_rows(act, &mut got, Some(&bias));
            for (i, (&g, &x)) in got.iter().zip(&data).enumerate() {
                assert!((g - act.apply(x + bias[i % 37])).abs() < 1e-6);
            }
        }
    }
}
