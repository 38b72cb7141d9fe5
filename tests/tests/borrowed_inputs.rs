//! Runs on borrowed inputs ([`Model::run_borrowed`]) compute what runs on owned inputs compute, and
//! leave the inputs as they were: ops that compute in place in an owned input's buffer (Add, Relu)
//! write a new buffer instead, and an output that is an input comes back as a copy.

use fff_models::onnx::{Elem, OnnxBuilder, D};
use fff_runtime::{DType, Model, Tensor};
use ndarray::ArrayD;

/// `sum = a + b`, `r = relu(c)` and `same = identity(a)`: the first two run in place on owned inputs,
/// the last is an input named as an output.
fn small_model() -> Model {
    let mut m = OnnxBuilder::new(17);
    let a = m.input("a", Elem::Float, &[D::S("batch"), D::N(3)]);
    let b = m.input("b", Elem::Float, &[D::S("batch"), D::N(3)]);
    let c = m.input("c", Elem::Float, &[D::S("batch"), D::N(3)]);
    let sum = m.node("Add", &[&a, &b], vec![]);
    m.rename(&sum, "sum");
    let r = m.node("Relu", &[&c], vec![]);
    m.rename(&r, "r");
    let same = m.node("Identity", &[&a], vec![]);
    m.rename(&same, "same");
    for name in ["sum", "r", "same"] {
        m.output(name, Elem::Float, &[D::S("batch"), D::N(3)]);
    }
    let plan =
        fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
            .expect("the model compiles");
    Model::from_bytes(&plan).expect("the plan loads")
}

fn tensor(values: &[f32]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(vec![2, 3], values.to_vec()).unwrap())
}

fn output<'a>(outputs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &outputs.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn borrowed_inputs_are_read_and_left_as_they_were() {
    let model = small_model();
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [10.0, -20.0, 30.0, -40.0, 50.0, -60.0];
    let c = [-1.5, 0.0, 2.5, -3.0, 4.0, -0.25];
    let inputs = vec![
        ("a".to_string(), tensor(&a)),
        ("b".to_string(), tensor(&b)),
        ("c".to_string(), tensor(&c)),
    ];
    let pristine = inputs.clone();
    let want_sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let want_r: Vec<f32> = c.iter().map(|&x| x.max(0.0)).collect();
    let views: Vec<_> = inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
    // Twice, handing the first run's outputs back, so the second computes into recycled buffers.
    for round in 0..2 {
        let outputs = model.run_borrowed(&views).unwrap();
        assert_eq!(output(&outputs, "sum"), &tensor(&want_sum), "round {round}");
        assert_eq!(output(&outputs, "r"), &tensor(&want_r), "round {round}");
        assert_eq!(output(&outputs, "same"), &tensor(&a), "round {round}");
        model.recycle(outputs);
    }
    drop(views);
    assert!(inputs == pristine, "a borrowed input was changed");

    // Owned inputs give the same outputs.
    let owned = model.run(inputs).unwrap();
    assert_eq!(output(&owned, "sum"), &tensor(&want_sum));
    assert_eq!(output(&owned, "r"), &tensor(&want_r));
    assert_eq!(output(&owned, "same"), &tensor(&a));
}

#[test]
fn borrowed_views_may_be_strided() {
    // A transposed view is not in standard layout; the ops read it as any other view.
    let model = small_model();
    let t = ArrayD::from_shape_vec(vec![3, 2], vec![1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
    let zeros = Tensor::zeros(DType::F32, &[2, 3]);
    let a_view = fff_runtime::TensorView::F32(t.t().into_dyn());
    let inputs = [("a", a_view), ("b", zeros.view()), ("c", zeros.view())];
    let outputs = model.run_borrowed(&inputs).unwrap();
    let want = tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(output(&outputs, "sum"), &want);
    assert_eq!(output(&outputs, "same"), &want);
}
