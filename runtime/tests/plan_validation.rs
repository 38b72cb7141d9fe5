//! Plans that pass their checksums but describe an impossible graph (as a buggy writer or a hand edit
//! could produce) are refused at load with a message naming the problem, never run.

use fff_runtime::op::{BinaryOp, Op};
use fff_runtime::plan::{
    encode, Dim, PlanConstant, PlanGraph, PlanInput, PlanNode, PlanOutput, WeightsBuilder,
};
use fff_runtime::{DType, Model, Tensor};

/// `y = x + c` with `x: float32[n]` and a constant `c` of four floats.
fn valid() -> (PlanGraph, Vec<u8>) {
    let mut w = WeightsBuilder::default();
    let (offset, len) = w.push(&Tensor::F32(ndarray::ArrayD::from_elem(
        ndarray::IxDyn(&[4]),
        1.5,
    )));
    let graph = PlanGraph {
        producer: "test".into(),
        num_values: 3,
        inputs: vec![PlanInput {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![Dim::Sym("n".into())],
            value: 0,
        }],
        outputs: vec![PlanOutput {
            name: "y".into(),
            value: 2,
            dtype: None,
            shape: None,
        }],
        constants: vec![PlanConstant {
            value: 1,
            dtype: DType::F32,
            shape: vec![4],
            offset,
            len,
        }],
        nodes: vec![PlanNode {
            name: "add".into(),
            op: Op::Binary(BinaryOp::Add),
            inputs: vec![Some(0), Some(1)],
            outputs: vec![2],
        }],
        text: None,
    };
    (graph, w.into_bytes())
}

fn load_err(edit: impl FnOnce(&mut PlanGraph)) -> String {
    let (mut g, w) = valid();
    edit(&mut g);
    match Model::from_bytes(&encode(&g, &w)) {
        Ok(_) => panic!("an impossible plan loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_unedited_plan_loads_and_runs() {
    let (g, w) = valid();
    let model = Model::from_bytes(&encode(&g, &w)).unwrap();
    let x = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[4]), 1.0));
    let out = model.run(vec![("x".to_string(), x)]).unwrap();
    assert_eq!(
        out[0].1,
        Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[4]), 2.5))
    );
}

#[test]
fn impossible_graphs_are_refused_with_the_reason() {
    type Edit = Box<dyn FnOnce(&mut PlanGraph)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "before it is defined",
            Box::new(|g| g.nodes[0].inputs[0] = Some(2)),
        ),
        ("out of range", Box::new(|g| g.nodes[0].outputs[0] = 7)),
        ("defined twice", Box::new(|g| g.constants[0].value = 0)),
        (
            "does not fit the weights section",
            Box::new(|g| g.constants[0].len = 1 << 40),
        ),
        (
            "does not fit the weights section",
            Box::new(|g| g.constants[0].shape = vec![5]),
        ),
        ("never computed", Box::new(|g| g.outputs[0].value = 1_000)),
        ("repeats", Box::new(|g| g.inputs.push(g.inputs[0].clone()))),
        (
            "more than a plan may hold",
            Box::new(|g| g.num_values = usize::MAX),
        ),
        ("has 2 outputs", Box::new(|g| g.nodes[0].outputs.push(1))),
    ];
    for (want, edit) in cases {
        let err = load_err(edit);
        assert!(
            err.contains("invalid plan") && err.contains(want),
            "expected '{want}', got: {err}"
        );
    }
}

#[test]
fn every_single_byte_flip_is_refused() {
    let (g, w) = valid();
    let bytes = encode(&g, &w);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        assert!(
            Model::from_bytes(&b).is_err(),
            "a flip at byte {i} went unnoticed"
        );
    }
}
