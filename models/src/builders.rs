//! ONNX models built in Rust with seeded weights, in the forms PyTorch exports them: feedforward layers
//! in the dense form and in the FFF training (masking) form, alone or inside a BERT-style encoder.

use crate::onnx::{tensor_f32, Attr, Elem, OnnxBuilder, D};
use crate::rng::Rng;

/// A feedforward layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ff {
    /// `Linear(d, width) -> GELU -> Linear(width, d)`, with biases.
    Dense { width: usize },
    /// An FFF layer in the masking form: `trees` trees of the given depth; the input projection has a
    /// bias, the output projection none (as UltraFastBERT's).
    Fff { trees: usize, depth: usize },
}

/// Deliberate defects, for tests that a wrong block is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Defects {
    /// At this level, the masking chain moves to the opposite child of the one the logit selects.
    pub flip_level: Option<usize>,
}

/// Adds a scalar float constant.
fn scalar(b: &mut OnnxBuilder, name: &str, v: f32) -> String {
    b.weight(name, &[], vec![v])
}

/// `x * 0.5 * (1 + erf(x / sqrt(2)))`, as PyTorch exports `gelu`.
pub fn gelu_erf(b: &mut OnnxBuilder, p: &str, x: &str) -> String {
    let s = scalar(b, &format!("{p}.sqrt2"), std::f32::consts::SQRT_2);
    let d = b.node("Div", &[x, &s], vec![]);
    let e = b.node("Erf", &[&d], vec![]);
    let one = scalar(b, &format!("{p}.one"), 1.0);
    let a = b.node("Add", &[&e, &one], vec![]);
    let m = b.node("Mul", &[x, &a], vec![]);
    let half = scalar(b, &format!("{p}.half"), 0.5);
    b.node("Mul", &[&m, &half], vec![])
}

/// The weights scale that keeps activations near unit variance.
fn init_scale(fan_in: usize) -> f32 {
    (3.0 / fan_in as f32).sqrt()
}

/// A dense feedforward layer on `x` (`[..., d]`): `Linear(d, width) -> GELU -> Linear(width, d)`.
pub fn dense_ff(
    b: &mut OnnxBuilder,
    rng: &mut Rng,
    p: &str,
    x: &str,
    d: usize,
    width: usize,
) -> String {
    let h = linear(b, rng, &format!("{p}.up"), x, d, width);
    let h = gelu_erf(b, p, &h);
    linear(b, rng, &format!("{p}.down"), &h, width, d)
}

/// `Squeeze` or `Unsqueeze` of `x` at one axis: the axes as an attribute before opset 13, as an input
/// from 13 on.
fn squeeze_op(b: &mut OnnxBuilder, op: &str, x: &str, axis: i64) -> String {
    if b.opset() < 13 {
        b.node(op, &[x], vec![("axes", Attr::Ints(vec![axis]))])
    } else {
        let name = format!("{x}.{op}_axes");
        let axes = b.ints(&name, &[1], vec![axis]);
        b.node(op, &[x, &axes], vec![])
    }
}

/// An FFF layer in the training (masking) form, as the TorchScript exporter writes UltraFastBERT's
/// `training_forward`: all `trees * (2^(depth+1) - 1)` neurons are computed, then multiplied by a 0/1
/// mask that GatherElements/ScatterElements build level by level.
#[allow(clippy::too_many_arguments)]
pub fn fff_masking(
    b: &mut OnnxBuilder,
    rng: &mut Rng,
    p: &str,
    x: &str,
    d: usize,
    trees: usize,
    depth: usize,
    defects: Defects,
) -> String {
    let n = (1usize << (depth + 1)) - 1;
    let k = trees * n;
    let w_in = b.weight(
        &format!("{p}.linear_in.weight"),
        &[k as i64, d as i64],
        rng.vec(k * d, init_scale(d)),
    );
    let b_in = b.weight(&format!("{p}.linear_in.bias"), &[k as i64], rng.vec(k, 0.1));
    let w_out = b.weight(
        &format!("{p}.linear_out.weight"),
        &[k as i64, d as i64],
        rng.vec(k * d, init_scale(depth + 1)),
    );
    let ints = |b: &mut OnnxBuilder, name: &str, v: Vec<i64>| {
        b.ints(&format!("{p}.{name}"), &[v.len() as i64], v)
    };

    let flat_shape = ints(b, "flat", vec![-1, d as i64]);
    let x2 = b.node("Reshape", &[x, &flat_shape], vec![]);
    let logits = b.node("Gemm", &[&x2, &w_in, &b_in], vec![("transB", Attr::Int(1))]);
    let zero = scalar(b, &format!("{p}.zero"), 0.0);
    let gt = b.node("Greater", &[&logits, &zero], vec![]);
    let decisions = b.node("Cast", &[&gt], vec![("to", Attr::Int(Elem::Int64 as i64))]);
    let act = gelu_erf(b, p, &logits);
    let tn = ints(b, "tn", vec![-1, trees as i64, n as i64]);
    let decisions = b.node("Reshape", &[&decisions, &tn], vec![]);
    let act = b.node("Reshape", &[&act, &tn], vec![]);

    // current = zeros [rows, trees]; mask = zeros like act, with the roots set.
    let rows_shape = b.node(
        "Shape",
        &[&x2],
        vec![("start", Attr::Int(0)), ("end", Attr::Int(1))],
    );
    let trees_c = ints(b, "trees", vec![trees as i64]);
    let rt = b.node(
        "Concat",
        &[&rows_shape, &trees_c],
        vec![("axis", Attr::Int(0))],
    );
    let mut current = b.node(
        "ConstantOfShape",
        &[&rt],
        vec![(
            "value",
            Attr::Tensor(Box::new(crate::onnx::tensor_i64("v", &[1], vec![0]))),
        )],
    );
    let act_shape = b.node("Shape", &[&act], vec![]);
    let mut mask = b.node(
        "ConstantOfShape",
        &[&act_shape],
        vec![(
            "value",
            Attr::Tensor(Box::new(tensor_f32("v", &[1], vec![0.0]))),
        )],
    );
    let set = |b: &mut OnnxBuilder, mask: &str, nodes: &str| {
        let idx = squeeze_op(b, "Unsqueeze", nodes, -1);
        let idx_shape = b.node("Shape", &[&idx], vec![]);
        let ones = b.node(
            "ConstantOfShape",
            &[&idx_shape],
            vec![(
                "value",
                Attr::Tensor(Box::new(tensor_f32("v", &[1], vec![1.0]))),
            )],
        );
        b.node(
            "ScatterElements",
            &[mask, &idx, &ones],
            vec![("axis", Attr::Int(2))],
        )
    };
    mask = set(b, &mask, &current);
    for level in 0..depth {
        let platform = (1i64 << level) - 1;
        let next_platform = (1i64 << (level + 1)) - 1;
        let idx = squeeze_op(b, "Unsqueeze", &current, -1);
        let moves = b.node(
            "GatherElements",
            &[&decisions, &idx],
            vec![("axis", Attr::Int(2))],
        );
        let mut moves = squeeze_op(b, "Squeeze", &moves, 2);
        if defects.flip_level == Some(level) {
            let one = b.ints(&format!("{p}.flip_one{level}"), &[], vec![1]);
            moves = b.node("Sub", &[&one, &moves], vec![]);
        }
        let pf = b.ints(&format!("{p}.platform{level}"), &[], vec![platform]);
        let two = b.ints(&format!("{p}.two{level}"), &[], vec![2]);
        let npf = b.ints(
            &format!("{p}.next_platform{level}"),
            &[],
            vec![next_platform],
        );
        let rel = b.node("Sub", &[&current, &pf], vec![]);
        let dbl = b.node("Mul", &[&rel, &two], vec![]);
        let step = b.node("Add", &[&dbl, &moves], vec![]);
        current = b.node("Add", &[&step, &npf], vec![]);
        mask = set(b, &mask, &current);
    }
    let masked = b.node("Mul", &[&act, &mask], vec![]);
    let flat_k = ints(b, "flat_k", vec![-1, k as i64]);
    let masked = b.node("Reshape", &[&masked, &flat_k], vec![]);
    let y = b.node("MatMul", &[&masked, &w_out], vec![]);
    let x_shape = b.node("Shape", &[x], vec![]);
    b.node("Reshape", &[&y, &x_shape], vec![])
}

/// The feedforward layer `ff` on `x` (`[..., d]`), in the form PyTorch exports it.
fn ff_block(
    b: &mut OnnxBuilder,
    rng: &mut Rng,
    p: &str,
    x: &str,
    d: usize,
    ff: Ff,
    defects: Defects,
) -> String {
    match ff {
        Ff::Dense { width } => dense_ff(b, rng, p, x, d, width),
        Ff::Fff { trees, depth } => fff_masking(b, rng, p, x, d, trees, depth, defects),
    }
}

/// A model of one feedforward layer at opset 17: input `x` `[batch, seq, d]`, output `y`.
pub fn ff_layer_model(d: usize, ff: Ff, seed: u64, defects: Defects) -> Vec<u8> {
    ff_layer_model_at(17, d, ff, seed, defects)
}

/// The same at another opset (11 and up).
pub fn ff_layer_model_at(opset: i64, d: usize, ff: Ff, seed: u64, defects: Defects) -> Vec<u8> {
    let mut b = OnnxBuilder::new(opset);
    let mut rng = Rng::new(seed);
    let x = b.input(
        "x",
        Elem::Float,
        &[D::S("batch"), D::S("seq"), D::N(d as i64)],
    );
    let y = ff_block(&mut b, &mut rng, "ff", &x, d, ff, defects);
    b.rename(&y, "y");
    b.output(
        "y",
        Elem::Float,
        &[D::S("batch"), D::S("seq"), D::N(d as i64)],
    );
    b.to_bytes()
}

/// A BERT-style post-norm encoder.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    pub vocab: usize,
    pub max_positions: usize,
    pub hidden: usize,
    pub heads: usize,
    /// One feedforward layer per encoder layer.
    pub layers: Vec<Ff>,
    pub seed: u64,
}

fn layer_norm(b: &mut OnnxBuilder, rng: &mut Rng, p: &str, x: &str, d: usize) -> String {
    let g = b.weight(
        &format!("{p}.weight"),
        &[d as i64],
        (0..d).map(|_| 1.0 + rng.symmetric(0.1)).collect(),
    );
    let beta = b.weight(&format!("{p}.bias"), &[d as i64], rng.vec(d, 0.1));
    b.node(
        "LayerNormalization",
        &[x, &g, &beta],
        vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-12))],
    )
}

fn linear(
    b: &mut OnnxBuilder,
    rng: &mut Rng,
    p: &str,
    x: &str,
    d_in: usize,
    d_out: usize,
) -> String {
    let w = b.weight(
        &format!("{p}.weight"),
        &[d_in as i64, d_out as i64],
        rng.vec(d_in * d_out, init_scale(d_in)),
    );
    let bias = b.weight(&format!("{p}.bias"), &[d_out as i64], rng.vec(d_out, 0.1));
    let y = b.node("MatMul", &[x, &w], vec![]);
    b.node("Add", &[&y, &bias], vec![])
}

/// The encoder: inputs `input_ids` and `attention_mask` (int64 `[batch, seq]`), output `hidden`
/// (`[batch, seq, hidden]`).
pub fn encoder_model(c: &EncoderConfig) -> Vec<u8> {
    let (d, h) = (c.hidden, c.heads);
    let dh = d / h;
    let mut b = OnnxBuilder::new(17);
    let mut rng = Rng::new(c.seed);
    let ids = b.input("input_ids", Elem::Int64, &[D::S("batch"), D::S("seq")]);
    let mask = b.input("attention_mask", Elem::Int64, &[D::S("batch"), D::S("seq")]);
    let word = b.weight(
        "emb.word",
        &[c.vocab as i64, d as i64],
        rng.vec(c.vocab * d, 1.0),
    );
    let pos = b.weight(
        "emb.pos",
        &[c.max_positions as i64, d as i64],
        rng.vec(c.max_positions * d, 1.0),
    );
    let we = b.node("Gather", &[&word, &ids], vec![]);
    let seq = b.node(
        "Shape",
        &[&ids],
        vec![("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let zero = b.ints("c.zero", &[], vec![0]);
    let one = b.ints("c.one", &[], vec![1]);
    let seq0 = b.node("Squeeze", &[&seq], vec![]);
    let positions = b.node("Range", &[&zero, &seq0, &one], vec![]);
    let pe = b.node("Gather", &[&pos, &positions], vec![]);
    let x = b.node("Add", &[&we, &pe], vec![]);
    let mut x = layer_norm(&mut b, &mut rng, "emb.ln", &x, d);

    // Additive mask: (1 - mask) * -10000, shaped [batch, 1, 1, seq].
    let axes12 = b.ints("c.axes12", &[2], vec![1, 2]);
    let m = b.node("Unsqueeze", &[&mask, &axes12], vec![]);
    let m = b.node("Cast", &[&m], vec![("to", Attr::Int(Elem::Float as i64))]);
    let onef = scalar(&mut b, "c.onef", 1.0);
    let inv = b.node("Sub", &[&onef, &m], vec![]);
    let big = scalar(&mut b, "c.neg", -10000.0);
    let add_mask = b.node("Mul", &[&inv, &big], vec![]);
    let heads_shape = b.ints("c.heads_shape", &[4], vec![0, 0, h as i64, dh as i64]);
    let merge_shape = b.ints("c.merge_shape", &[3], vec![0, 0, d as i64]);
    let scale = scalar(&mut b, "c.scale", (dh as f32).sqrt());

    for (i, ff) in c.layers.iter().enumerate() {
        let p = format!("layer{i}");
        let split = |b: &mut OnnxBuilder, rng: &mut Rng, name: &str, x: &str| {
            let t = linear(b, rng, &format!("{p}.{name}"), x, d, d);
            let t = b.node("Reshape", &[&t, &heads_shape], vec![]);
            b.node(
                "Transpose",
                &[&t],
                vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            )
        };
        let q = split(&mut b, &mut rng, "q", &x);
        let k = split(&mut b, &mut rng, "k", &x);
        let v = split(&mut b, &mut rng, "v", &x);
        let kt = b.node(
            "Transpose",
            &[&k],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let s = b.node("MatMul", &[&q, &kt], vec![]);
        let s = b.node("Div", &[&s, &scale], vec![]);
        let s = b.node("Add", &[&s, &add_mask], vec![]);
        let probs = b.node("Softmax", &[&s], vec![("axis", Attr::Int(-1))]);
        let ctx = b.node("MatMul", &[&probs, &v], vec![]);
        let ctx = b.node(
            "Transpose",
            &[&ctx],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let ctx = b.node("Reshape", &[&ctx, &merge_shape], vec![]);
        let attn = linear(&mut b, &mut rng, &format!("{p}.attn_out"), &ctx, d, d);
        let res = b.node("Add", &[&x, &attn], vec![]);
        x = layer_norm(&mut b, &mut rng, &format!("{p}.ln1"), &res, d);
        let y = ff_block(
            &mut b,
            &mut rng,
            &format!("{p}.ff"),
            &x,
            d,
            *ff,
            Defects::default(),
        );
        let res = b.node("Add", &[&x, &y], vec![]);
        x = layer_norm(&mut b, &mut rng, &format!("{p}.ln2"), &res, d);
    }
    b.rename(&x, "hidden");
    b.output(
        "hidden",
        Elem::Float,
        &[D::S("batch"), D::S("seq"), D::N(d as i64)],
    );
    b.to_bytes()
}

/// A stack of `blocks` residual feedforward blocks, `x = x + ff(x)` each, at opset 17: input `x`
/// `[batch, seq, d]`, output `y`. A deep graph of many small blocks, for the compiler's scaling.
pub fn residual_stack_model(d: usize, ff: Ff, blocks: usize, seed: u64) -> Vec<u8> {
    let mut b = OnnxBuilder::new(17);
    let mut rng = Rng::new(seed);
    let dims = [D::S("batch"), D::S("seq"), D::N(d as i64)];
    let mut x = b.input("x", Elem::Float, &dims);
    for i in 0..blocks {
        let y = ff_block(
            &mut b,
            &mut rng,
            &format!("block{i}.ff"),
            &x,
            d,
            ff,
            Defects::default(),
        );
        x = b.node("Add", &[&x, &y], vec![]);
    }
    b.rename(&x, "y");
    b.output("y", Elem::Float, &dims);
    b.to_bytes()
}
