//! Op evaluation on small cases whose results are written out by hand (the ONNX specification's own
//! examples where it gives them).

use fff_runtime::op::{BinaryOp, Op, ScatterReduction};
use fff_runtime::opset::eval;
use fff_runtime::{Tensor, TensorView};
use ndarray::{ArrayD, IxDyn};

fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn run(op: Op, inputs: &[Option<&Tensor>], n_out: usize) -> Vec<Tensor> {
    let views: Vec<Option<TensorView>> = inputs.iter().map(|t| t.map(Tensor::view)).collect();
    eval(&op, &views, n_out).unwrap().into_vec()
}

fn run_err(op: Op, inputs: &[Option<&Tensor>]) -> String {
    let views: Vec<Option<TensorView>> = inputs.iter().map(|t| t.map(Tensor::view)).collect();
    eval(&op, &views, 1).unwrap_err().to_string()
}

fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Tensor {
    let n = starts.len();
    let (s, e, a, st) = (
        i64s(&[n], starts),
        i64s(&[n], ends),
        i64s(&[n], axes),
        i64s(&[n], steps),
    );
    run(
        Op::Slice,
        &[Some(x), Some(&s), Some(&e), Some(&a), Some(&st)],
        1,
    )
    .remove(0)
}

#[test]
fn slice_with_negative_step_and_clamped_bounds() {
    // ONNX example: data [[1,2,3,4],[5,6,7,8]], starts [1,0], ends [2,3], steps [1,2] -> [[5,7]].
    let x = f32s(&[2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    assert_eq!(
        slice(&x, &[1, 0], &[2, 3], &[0, 1], &[1, 2]),
        f32s(&[1, 2], &[5., 7.])
    );
    // Reversing the last axis with a huge negative end: x[:, ::-1].
    assert_eq!(
        slice(&x, &[-1], &[i64::MIN], &[1], &[-1]),
        f32s(&[2, 4], &[4., 3., 2., 1., 8., 7., 6., 5.])
    );
    // Step -2 from index 3 down to (not including) 0: [4, 2].
    assert_eq!(
        slice(&x, &[3], &[0], &[1], &[-2]),
        f32s(&[2, 2], &[4., 2., 8., 6.])
    );
}

#[test]
fn split_into_uneven_parts_and_by_sizes() {
    let x = f32s(&[5], &[1., 2., 3., 4., 5.]);
    let out = run(
        Op::Split {
            axis: 0,
            num_outputs: 2,
        },
        &[Some(&x), None],
        2,
    );
    assert_eq!(out, vec![f32s(&[3], &[1., 2., 3.]), f32s(&[2], &[4., 5.])]);
    let out = run(
        Op::Split {
            axis: 0,
            num_outputs: 2,
        },
        &[Some(&x), Some(&i64s(&[2], &[1, 4]))],
        2,
    );
    assert_eq!(out, vec![f32s(&[1], &[1.]), f32s(&[4], &[2., 3., 4., 5.])]);
}

#[test]
fn reshape_copies_zero_and_infers_minus_one() {
    let x = f32s(&[2, 3, 4], &[0.0; 24]);
    let out = run(
        Op::Reshape { allowzero: false },
        &[Some(&x), Some(&i64s(&[3], &[0, -1, 2]))],
        1,
    );
    assert_eq!(out[0].shape(), &[2, 6, 2]);
    let err = run_err(
        Op::Reshape { allowzero: false },
        &[Some(&x), Some(&i64s(&[2], &[5, -1]))],
    );
    assert!(err.contains("cannot reshape"), "{err}");
}

#[test]
fn gather_nd_and_gather_elements_follow_the_spec_examples() {
    // GatherND example 2: data [[0,1],[2,3]], indices [[1],[0]] -> [[2,3],[0,1]].
    let data = i64s(&[2, 2], &[0, 1, 2, 3]);
    let out = run(
        Op::GatherNd { batch_dims: 0 },
        &[Some(&data), Some(&i64s(&[2, 1], &[1, 0]))],
        1,
    );
    assert_eq!(out[0], i64s(&[2, 2], &[2, 3, 0, 1]));
    // GatherElements example 1: data [[1,2],[3,4]], indices [[0,0],[1,0]], axis 1 -> [[1,1],[4,3]].
    let data = f32s(&[2, 2], &[1., 2., 3., 4.]);
    let out = run(
        Op::GatherElements { axis: 1 },
        &[Some(&data), Some(&i64s(&[2, 2], &[0, 0, 1, 0]))],
        1,
    );
    assert_eq!(out[0], f32s(&[2, 2], &[1., 1., 4., 3.]));
    let err = run_err(
        Op::Gather { axis: 0 },
        &[Some(&data), Some(&i64s(&[1], &[2]))],
    );
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn scatter_elements_follows_the_spec_example() {
    // data [[1,2,3,4,5]], indices [[1,3]], updates [[1.1,2.1]], axis 1 -> [[1,1.1,3,2.1,5]].
    let data = f32s(&[1, 5], &[1., 2., 3., 4., 5.]);
    let (idx, upd) = (i64s(&[1, 2], &[1, 3]), f32s(&[1, 2], &[1.1, 2.1]));
    let op = Op::ScatterElements {
        axis: 1,
        reduction: ScatterReduction::None,
    };
    let out = run(op, &[Some(&data), Some(&idx), Some(&upd)], 1);
    assert_eq!(out[0], f32s(&[1, 5], &[1., 1.1, 3., 2.1, 5.]));
}

#[test]
fn scatter_nd_follows_the_spec_examples() {
    // Elements: data [1..8], indices [[4],[3],[1],[7]], updates [9,10,11,12] -> [1,11,3,10,9,6,7,12].
    let data = f32s(&[8], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let (idx, upd) = (
        i64s(&[4, 1], &[4, 3, 1, 7]),
        f32s(&[4], &[9., 10., 11., 12.]),
    );
    let none = Op::ScatterNd {
        reduction: ScatterReduction::None,
    };
    let out = run(none.clone(), &[Some(&data), Some(&idx), Some(&upd)], 1);
    assert_eq!(out[0], f32s(&[8], &[1., 11., 3., 10., 9., 6., 7., 12.]));
    // Slices: rows 0 and 2 of a [4, 2] matrix replaced, row -1 (the last) too.
    let data = f32s(&[4, 2], &[0., 0., 1., 1., 2., 2., 3., 3.]);
    let idx = i64s(&[3, 1], &[0, 2, -1]);
    let upd = f32s(&[3, 2], &[5., 6., 7., 8., 9., 10.]);
    let out = run(none.clone(), &[Some(&data), Some(&idx), Some(&upd)], 1);
    assert_eq!(out[0], f32s(&[4, 2], &[5., 6., 1., 1., 7., 8., 9., 10.]));
    // Element pairs of a matrix, the way PyTorch exports `x[:, i] = v`; a repeated index adds up.
    let data = f32s(&[2, 3], &[0.; 6]);
    let idx = i64s(&[3, 2], &[0, 1, 1, 1, 0, 1]);
    let upd = f32s(&[3], &[1., 2., 4.]);
    let add = Op::ScatterNd {
        reduction: ScatterReduction::Add,
    };
    let out = run(add, &[Some(&data), Some(&idx), Some(&upd)], 1);
    assert_eq!(out[0], f32s(&[2, 3], &[0., 5., 0., 0., 2., 0.]));
    // An empty index addresses the whole tensor.
    let data = f32s(&[2], &[1., 2.]);
    let (idx, upd) = (i64s(&[0], &[]), f32s(&[2], &[3., 4.]));
    let out = run(none.clone(), &[Some(&data), Some(&idx), Some(&upd)], 1);
    assert_eq!(out[0], f32s(&[2], &[3., 4.]));
    // Updates of the wrong shape and indices out of range are errors.
    let data = f32s(&[4, 2], &[0.; 8]);
    let err = run_err(
        none.clone(),
        &[
            Some(&data),
            Some(&i64s(&[1, 1], &[0])),
            Some(&f32s(&[1, 3], &[0.; 3])),
        ],
    );
    assert!(err.contains("ScatterND"), "{err}");
    let err = run_err(
        none,
        &[
            Some(&data),
            Some(&i64s(&[1, 1], &[4])),
            Some(&f32s(&[1, 2], &[0.; 2])),
        ],
    );
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn softmax_before_opset_13_spans_all_trailing_axes() {
    let x = f32s(&[1, 2, 2], &[0., 0., 0., 0.]);
    let out = run(
        Op::Softmax {
            axis: 1,
            coerce_2d: true,
        },
        &[Some(&x)],
        1,
    );
    assert_eq!(out[0], f32s(&[1, 2, 2], &[0.25; 4]));
    let out = run(
        Op::Softmax {
            axis: 1,
            coerce_2d: false,
        },
        &[Some(&x)],
        1,
    );
    assert_eq!(out[0], f32s(&[1, 2, 2], &[0.5; 4]));
}

#[test]
fn integer_arithmetic_is_checked() {
    let a = i64s(&[3], &[7, -7, 7]);
    let b = i64s(&[3], &[2, 2, -2]);
    assert_eq!(
        run(Op::Binary(BinaryOp::Div), &[Some(&a), Some(&b)], 1)[0],
        i64s(&[3], &[3, -3, -3])
    );
    assert_eq!(
        run(Op::Binary(BinaryOp::Mod), &[Some(&a), Some(&b)], 1)[0],
        i64s(&[3], &[1, 1, -1])
    );
    let zero = i64s(&[1], &[0]);
    assert!(run_err(Op::Binary(BinaryOp::Div), &[Some(&a), Some(&zero)]).contains("by zero"));
    assert!(run_err(
        Op::Binary(BinaryOp::Add),
        &[Some(&a), Some(&f32s(&[1], &[1.]))]
    )
    .contains("int64"));
}

#[test]
fn matmul_broadcasts_batches_and_promotes_vectors() {
    let a = f32s(&[2, 1, 2], &[1., 2., 3., 4.]);
    let b = f32s(&[2, 1], &[10., 100.]);
    assert_eq!(
        run(Op::MatMul, &[Some(&a), Some(&b)], 1)[0],
        f32s(&[2, 1, 1], &[210., 430.])
    );
    let v = f32s(&[2], &[1., 1.]);
    let m = f32s(&[2, 2], &[1., 2., 3., 4.]);
    assert_eq!(
        run(Op::MatMul, &[Some(&v), Some(&m)], 1)[0],
        f32s(&[2], &[4., 6.])
    );
    let err = run_err(Op::MatMul, &[Some(&a), Some(&f32s(&[3, 1], &[0.; 3]))]);
    assert!(err.contains("inner dims"), "{err}");
}

#[test]
fn range_and_expand() {
    let (s, l, d) = (
        Tensor::scalar_i64(1),
        Tensor::scalar_i64(8),
        Tensor::scalar_i64(3),
    );
    assert_eq!(
        run(Op::Range, &[Some(&s), Some(&l), Some(&d)], 1)[0],
        i64s(&[3], &[1, 4, 7])
    );
    let out = run(
        Op::Expand,
        &[Some(&f32s(&[2, 1], &[1., 2.])), Some(&i64s(&[2], &[1, 3]))],
        1,
    );
    assert_eq!(out[0], f32s(&[2, 3], &[1., 1., 1., 2., 2., 2.]));
    let err = run_err(
        Op::Expand,
        &[
            Some(&f32s(&[1], &[1.])),
            Some(&i64s(&[2], &[1 << 40, 1 << 40])),
        ],
    );
    assert!(err.contains("too large"), "{err}");
}

/// bfloat16 tensors exist only as FastFeedForward weights: every other op refuses them with an error
/// (Cast converts, Where and Concat select or join them), never a panic.
#[test]
fn bfloat16_operands_get_errors_not_panics() {
    use fff_runtime::op::{ReduceOp, UnaryOp};
    use fff_runtime::tensor::Bf16;
    use fff_runtime::DType;
    let b = Tensor::BF16(ArrayD::from_elem(IxDyn(&[2, 3]), Bf16::from_f32(1.5)));
    let f = f32s(&[2, 3], &[1.0; 6]);
    let axes = i64s(&[1], &[1]);
    let idx = i64s(&[1], &[0]);
    let refused: Vec<(Op, Vec<Option<&Tensor>>)> = vec![
        (Op::Unary(UnaryOp::Neg), vec![Some(&b)]),
        (Op::Binary(BinaryOp::Add), vec![Some(&b), Some(&b)]),
        (Op::Binary(BinaryOp::Add), vec![Some(&b), Some(&f)]),
        (Op::Binary(BinaryOp::Pow), vec![Some(&f), Some(&b)]),
        (Op::Clip, vec![Some(&b), None, None]),
        (Op::MatMul, vec![Some(&b), Some(&b)]),
        (Op::Linear, vec![Some(&f), Some(&b), None, None]),
        (
            Op::Softmax {
                axis: -1,
                coerce_2d: false,
            },
            vec![Some(&b)],
        ),
        (
            Op::LayerNorm {
                axis: -1,
                epsilon: 1e-5.into(),
            },
            vec![Some(&b), Some(&f), None],
        ),
        (
            Op::Reduce {
                op: ReduceOp::Sum,
                keepdims: true,
                noop_with_empty_axes: false,
            },
            vec![Some(&b), Some(&axes)],
        ),
        (
            Op::CumSum {
                exclusive: false,
                reverse: false,
            },
            vec![Some(&b), Some(&idx)],
        ),
        (
            Op::ArgMax {
                axis: 0,
                keepdims: true,
                select_last_index: false,
            },
            vec![Some(&b)],
        ),
    ];
    for (op, inputs) in refused {
        let views: Vec<Option<TensorView>> = inputs.iter().map(|t| t.map(Tensor::view)).collect();
        assert!(eval(&op, &views, 1).is_err(), "{op:?} accepted bfloat16");
    }
    // Cast widens exactly; Where and Concat keep the type.
    let wide = run(Op::Cast { to: DType::F32 }, &[Some(&b)], 1).remove(0);
    assert_eq!(wide, f32s(&[2, 3], &[1.5; 6]));
    let joined = run(Op::Concat { axis: 0 }, &[Some(&b), Some(&b)], 1).remove(0);
    assert_eq!(joined.shape(), &[4, 3]);
    let cond = Tensor::Bool(ArrayD::from_elem(IxDyn(&[2, 3]), true));
    let picked = run(Op::Where, &[Some(&cond), Some(&b), Some(&b)], 1).remove(0);
    assert_eq!(picked, b);
}

/// PackedLinear on weights written out as panels by hand: `[[1, 2], [3, 4]]` as one panel of 64
/// columns (two real, the rest zero), with bias and residual; then weights that do not match, and
/// empty weights that ask for an absurd output width: errors, never a panic or an abort.
#[test]
fn packed_linear_reads_panels_and_refuses_bad_ones() {
    let mut panel = vec![0.0f32; 2 * 64];
    panel[..2].copy_from_slice(&[1.0, 2.0]);
    panel[64..66].copy_from_slice(&[3.0, 4.0]);
    let w = f32s(&[1, 2, 64], &panel);
    let x = f32s(&[1, 2], &[1.0, 1.0]);
    let b = f32s(&[2], &[0.5, -0.5]);
    let r = f32s(&[1, 2], &[10.0, 20.0]);
    let out = run(
        Op::PackedLinear { n: 2 },
        &[Some(&x), Some(&w), Some(&b), Some(&r)],
        1,
    );
    assert_eq!(out[0], f32s(&[1, 2], &[14.5, 25.5]));
    // Narrower panels, as the runtime repacks them at load, are read by their width.
    let narrow = f32s(&[1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let out = run(Op::PackedLinear { n: 2 }, &[Some(&x), Some(&narrow)], 1);
    assert_eq!(out[0], f32s(&[1, 2], &[4.0, 6.0]));
    // Too few panels for n, too many, and panels wider than the kernels take.
    let err = run_err(Op::PackedLinear { n: 65 }, &[Some(&x), Some(&w)]);
    assert!(err.contains("PackedLinear"), "{err}");
    let two = f32s(&[2, 2, 2], &[0.0; 8]);
    let err = run_err(Op::PackedLinear { n: 2 }, &[Some(&x), Some(&two)]);
    assert!(err.contains("PackedLinear"), "{err}");
    let wide = f32s(&[1, 2, 65], &[0.0; 130]);
    let err = run_err(Op::PackedLinear { n: 2 }, &[Some(&x), Some(&wide)]);
    assert!(err.contains("PackedLinear"), "{err}");
    // No weights at all (k = 0), yet 2^60 outputs asked for.
    let n = 1usize << 60;
    let empty_x = f32s(&[1, 0], &[]);
    let empty_w = Tensor::F32(ArrayD::zeros(IxDyn(&[n / 64, 0, 64])));
    let err = run_err(Op::PackedLinear { n }, &[Some(&empty_x), Some(&empty_w)]);
    assert!(err.contains("too large"), "{err}");
    // The same through a dense FastFeedForward with panel weights: refused, a layer has neurons.
    let ff = Op::FastFeedForward {
        depth: 0,
        trees: 0,
        activation: fff_runtime::op::FffActivation::Gelu,
        branch: fff_runtime::op::FffBranch::Gt,
    };
    let w_in = Tensor::F32(ArrayD::zeros(IxDyn(&[0, 0, 64])));
    let err = run_err(
        ff,
        &[Some(&empty_x), Some(&w_in), None, Some(&empty_w), None],
    );
    assert!(err.contains("no trees"), "{err}");
}
