//! The feedforward pass's work grows with the graph, not with the number of blocks times the graph: a
//! stack of residual blocks twice as deep costs it about twice the searching, and it analyses the whole
//! graph once, not once per block.

use fff_compiler::passes::{self, feedforward};
use fff_compiler::{import, Options};
use fff_models::builders::{residual_stack_model, Ff};

/// The pass's work on a stack of `blocks` residual dense blocks, every one of which it must rewrite.
fn pass_work(blocks: usize) -> feedforward::Work {
    let onnx = residual_stack_model(8, Ff::Dense { width: 12 }, blocks, 3);
    let mut g = import::import_model(&import::parse(&onnx).unwrap(), None).unwrap();
    let before = Options {
        stop_after: Some("layer-norm".into()),
        ..Options::default()
    };
    passes::run(&mut g, &before, &mut |_, _| {}).unwrap();
    let work = feedforward::run_counted(&mut g).unwrap();
    assert_eq!(g.report.rewritten.len(), blocks, "{:?}", g.report.refused);
    assert_eq!(work.judged, blocks);
    work
}

#[test]
fn feedforward_work_grows_linearly_with_blocks() {
    let (small, large) = (pass_work(200), pass_work(400));
    assert_eq!((small.graph_analyses, large.graph_analyses), (1, 1));
    let ratio = large.pairing_visits as f64 / small.pairing_visits as f64;
    assert!(
        ratio <= 2.5,
        "pairing visits {} for 200 blocks, {} for 400 (x{ratio:.2})",
        small.pairing_visits,
        large.pairing_visits
    );
}
