//! Evaluation that reuses the buffer of an input no later node reads. Ops that only change the shape
//! keep the buffer as it is; float element-wise ops and last-axis Softmax write their result into it.
//! The executor hands an input over only when this node is its last reader and reads it once; the
//! result equals [`super::eval`]'s, which is used whenever the handed-over input does not fit (another
//! dtype, or an output shape larger than the buffer).

use super::{
    elementwise, integer_linear, layer_norm, layout, linear, quant_linear, softmax, IntegerLinear,
    LayerNorm, Linear, Op, QuantLinear,
};
use crate::error::Result;
use crate::tensor::{Tensor, TensorView};

/// What became of a handed-over input.
pub enum InPlace {
    /// The op's single output, computed in the input's buffer.
    Done(Tensor),
    /// The input, unchanged: this op cannot reuse it.
    Declined(Tensor),
}

/// The inputs of `op` whose buffer the op could reuse, most useful first; each op module states its
/// own.
pub fn candidates(op: &Op) -> &'static [usize] {
    match op {
        Op::Identity | Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze | Op::Unsqueeze => {
            layout::RESHAPE_IN_PLACE
        }
        Op::Unary(u) => elementwise::unary_in_place_candidates(*u),
        Op::Binary(b) => elementwise::binary_in_place_candidates(*b),
        Op::Softmax { .. } | Op::LogSoftmax { .. } => softmax::IN_PLACE,
        Op::LayerNorm { .. } => layer_norm::IN_PLACE,
        Op::Linear | Op::PackedLinear { .. } => linear::IN_PLACE,
        Op::QuantLinear { .. } => quant_linear::IN_PLACE,
        Op::IntegerLinear { .. } => integer_linear::IN_PLACE,
        _ => &[],
    }
}

/// Evaluates `op` with input `index` given as `owned` (its entry in `inputs` is ignored). Never
/// panics, as [`super::eval`].
pub fn eval(
    op: &Op,
    index: usize,
    owned: Tensor,
    inputs: &[Option<TensorView>],
) -> Result<InPlace> {
    crate::error::contain_panic(|| eval_checked(op, index, owned, inputs))
}

/// [`eval`] itself.
fn eval_checked(
    op: &Op,
    index: usize,
    owned: Tensor,
    inputs: &[Option<TensorView>],
) -> Result<InPlace> {
    if let Some(target) = layout::reshape_only_target(op, owned.shape(), inputs)? {
        return Ok(match reshaped(owned, &target) {
            Ok(t) => InPlace::Done(t),
            Err(t) => InPlace::Declined(t),
        });
    }
    let Tensor::F32(a) = owned else {
        return Ok(InPlace::Declined(owned));
    };
    if !a.is_standard_layout() {
        return Ok(InPlace::Declined(Tensor::F32(a)));
    }
    match op {
        Op::Unary(u) => Ok(elementwise::unary_in_place(*u, a)),
        Op::Binary(b) => elementwise::binary_in_place(*b, index, a, inputs),
        Op::LayerNorm { axis, epsilon } if index == LayerNorm::X => {
            layer_norm::in_place(a, inputs, *axis, epsilon.0)
        }
        Op::Linear | Op::PackedLinear { .. } if index == Linear::R => {
            linear::in_place(op, a, inputs)
        }
        Op::QuantLinear {
            n,
            precision,
            activation,
        } if index == QuantLinear::R => quant_linear::in_place(
            quant_linear::Params {
                n: *n,
                precision: *precision,
                activation: *activation,
            },
            a,
            inputs,
        ),
        Op::IntegerLinear { n, activation } if index == IntegerLinear::R => {
            integer_linear::in_place(
                integer_linear::Params {
                    n: *n,
                    activation: *activation,
                },
                a,
                inputs,
            )
        }
        Op::Softmax { axis, coerce_2d } => softmax::in_place(a, *axis, *coerce_2d, false),
        Op::LogSoftmax { axis, coerce_2d } => softmax::in_place(a, *axis, *coerce_2d, true),
        _ => Ok(InPlace::Declined(Tensor::F32(a))),
    }
}

/// The same elements under another shape, without a copy.
fn reshaped(t: Tensor, shape: &[usize]) -> std::result::Result<Tensor, Tensor> {
    macro_rules! go {
        ($a:expr, $variant:ident) => {{
            let a = $a;
            if !a.is_standard_layout() {
                return Err(Tensor::$variant(a));
            }
            match a.into_shape_with_order(ndarray::IxDyn(shape)) {
                Ok(r) => Ok(Tensor::$variant(r)),
                Err(e) => unreachable!("element count checked by the shape rule: {e}"),
            }
        }};
    }
    match t {
        Tensor::F32(a) => go!(a, F32),
        Tensor::I64(a) => go!(a, I64),
        Tensor::I32(a) => go!(a, I32),
        Tensor::Bool(a) => go!(a, Bool),
        Tensor::BF16(a) => go!(a, BF16),
        Tensor::I8(a) => go!(a, I8),
        Tensor::U8(a) => go!(a, U8),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::opset::BinaryOp;

    fn t(shape: &[usize], seed: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| ((i as f32 + seed) * 0.37).sin() + 0.5)
            .collect();
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    /// Every op and operand position computed in place equals the ordinary evaluation, and inputs
    /// whose buffer is too small for the result are handed back.
    #[test]
    fn in_place_agrees_with_eval() {
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
        ];
        let (big, small) = (t(&[2, 3, 4], 1.0), t(&[4], 2.0));
        for op in ops {
            let op = Op::Binary(op);
            for (a, b) in [(&big, &small), (&small, &big), (&big, &big)] {
                let want = super::super::eval(&op, &[Some(a.view()), Some(b.view())], 1).unwrap();
                for index in [0, 1] {
                    let owned = if index == 0 { a.clone() } else { b.clone() };
                    let other = if index == 0 { b.view() } else { a.view() };
                    let views = if index == 0 {
                        [None, Some(other)]
                    } else {
                        [Some(other), None]
                    };
                    match eval(&op, index, owned.clone(), &views).unwrap() {
                        InPlace::Done(got) => assert_eq!(got, want[0], "{op:?} index {index}"),
                        InPlace::Declined(back) => {
                            assert_eq!(back, owned);
                            assert_ne!(owned.shape(), want[0].shape(), "{op:?} declined");
                        }
                    }
                }
            }
        }
        let shape = Tensor::vec_i64(vec![6, -1]);
        let op = Op::Reshape { allowzero: false };
        let want = super::super::eval(&op, &[Some(big.view()), Some(shape.view())], 1).unwrap();
        let InPlace::Done(got) = eval(&op, 0, big.clone(), &[None, Some(shape.view())]).unwrap()
        else {
            panic!("reshape declined")
        };
        assert_eq!(got, want[0]);
        let op = Op::Softmax {
            axis: -1,
            coerce_2d: false,
        };
        let want = super::super::eval(&op, &[Some(big.view())], 1).unwrap();
        let InPlace::Done(got) = eval(&op, 0, big.clone(), &[None]).unwrap() else {
            panic!("softmax declined")
        };
        assert_eq!(got, want[0]);
    }

    /// LayerNorm written over its input equals the ordinary evaluation (the kernel itself is tested
    /// against f64 in `fff-ops`).
    #[test]
    fn layer_norm_in_place_agrees_with_eval() {
        let (x, scale, bias) = (t(&[2, 3, 8], 1.0), t(&[8], 2.0), t(&[8], 3.0));
        let op = Op::LayerNorm {
            axis: -1,
            epsilon: 1e-5.into(),
        };
        let want = super::super::eval(
            &op,
            &[Some(x.view()), Some(scale.view()), Some(bias.view())],
            1,
        )
        .unwrap();
        let InPlace::Done(got) = eval(
            &op,
            0,
            x.clone(),
            &[None, Some(scale.view()), Some(bias.view())],
        )
        .unwrap() else {
            panic!("layer norm declined")
        };
        assert_eq!(got, want[0]);
    }

    /// `Linear(X, W, B, R)` accumulated onto the residual's buffer, and evaluated the ordinary way,
    /// both equal the sums written out in f64.
    #[test]
    fn linear_onto_residual_matches_loops() {
        let (x, w, b, r) = (
            t(&[2, 3, 4], 1.0),
            t(&[4, 5], 2.0),
            t(&[5], 3.0),
            t(&[2, 3, 5], 4.0),
        );
        let (xs, ws, bs, rs) = (x.view(), w.view(), b.view(), r.view());
        let (xv, wv, bv, rv) = (
            xs.f32().unwrap(),
            ws.f32().unwrap(),
            bs.f32().unwrap(),
            rs.f32().unwrap(),
        );
        let mut want = vec![0.0f64; 30];
        for (row, out) in want.chunks_mut(5).enumerate() {
            for (j, o) in out.iter_mut().enumerate() {
                let dot: f64 = (0..4)
                    .map(|k| xv.as_slice().unwrap()[row * 4 + k] as f64 * wv[[k, j]] as f64)
                    .sum();
                *o = dot + bv[[j]] as f64 + rv.as_slice().unwrap()[row * 5 + j] as f64;
            }
        }
        let op = Op::Linear;
        let ordinary = super::super::eval(
            &op,
            &[
                Some(xs.clone()),
                Some(ws.clone()),
                Some(bs.clone()),
                Some(rs.clone()),
            ],
            1,
        )
        .unwrap();
        let InPlace::Done(in_place) = eval(
            &op,
            3,
            r.clone(),
            &[Some(xs.clone()), Some(ws.clone()), Some(bs.clone()), None],
        )
        .unwrap() else {
            panic!("linear declined its residual")
        };
        for got in [&ordinary[0], &in_place] {
            assert_eq!(got.shape(), &[2, 3, 5]);
            let got = got.view();
            let got = got.f32().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
        // A residual that broadcasts: declined in place, added like Add otherwise.
        let small = t(&[5], 5.0);
        let back = eval(
            &op,
            3,
            small.clone(),
            &[Some(xs.clone()), Some(ws.clone()), Some(bs.clone()), None],
        );
        assert!(matches!(back, Ok(InPlace::Declined(ref t)) if *t == small));
        let got = super::super::eval(&op, &[Some(xs), Some(ws), Some(bs), Some(small.view())], 1)
            .unwrap();
        let (got, sv) = (got[0].view(), small.view());
        let (got, sv) = (got.f32().unwrap(), sv.f32().unwrap());
        let base = ordinary[0].view();
        let base = base.f32().unwrap();
        for ((g, b), (i, r)) in got.iter().zip(base.iter()).zip(rv.iter().enumerate()) {
            // `base` includes R; swap it for the broadcast `small`.
            let want = b - r + sv[[i % 5]];
            assert!((g - want).abs() < 1e-5, "{g} vs {want}");
        }
    }
}
