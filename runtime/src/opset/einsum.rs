//! Einsum on float tensors: operands contracted two at a time, each pair as one batched MatMul.
//!
//! The equation is parsed against the operands' ranks ([`parse`]): `...` stands for the axes a term does
//! not name, right-aligned and broadcast across operands as numpy does, and an equation without `->`
//! outputs the broadcast axes, then the labels used once, in alphabetical order. A pair is contracted by
//! summing away the labels only one of them has and nothing later needs, then permuting both to
//! `[batch, kept, summed]` and `[batch, summed, kept]` and multiplying. A label repeated within one term
//! (a diagonal) is refused with an error.

use ndarray::{ArrayD, Axis, IxDyn};

use super::fact::{fact, shape_of, Dim, Facts, Inferred};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorView};

/// One axis label: a letter of the equation, or the `k`-th axis from the right under `...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    Broadcast(usize),
    Letter(char),
}

/// The equation's terms, one list of labels per operand and one for the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub inputs: Vec<Vec<Label>>,
    pub output: Vec<Label>,
}

/// Parses `equation` for operands of the given ranks.
pub fn parse(equation: &str, ranks: &[usize]) -> Result<Parsed> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let bad = |why: &str| Error::invalid(format!("Einsum equation '{equation}': {why}"));
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return Err(bad(&format!(
            "{} terms for {} operands",
            terms.len(),
            ranks.len()
        )));
    }
    let mut broadcast_rank = 0;
    let mut inputs = Vec::with_capacity(terms.len());
    for (term, &rank) in terms.iter().zip(ranks) {
        let (labels, has_ellipsis) =
            letters(term).ok_or_else(|| bad("a term is not letters and '...'"))?;
        let named = labels.iter().filter(|l| l.is_some()).count();
        let hidden = match (has_ellipsis, rank.checked_sub(named)) {
            (true, Some(h)) => h,
            (false, Some(0)) => 0,
            _ => {
                return Err(bad(&format!(
                    "a term names {named} axes of an operand of rank {rank}"
                )))
            }
        };
        broadcast_rank = broadcast_rank.max(hidden);
        let out = expanded(&labels, hidden);
        if repeats(&out) {
            return Err(bad(
                "a label repeated within one term (a diagonal) is not supported",
            ));
        }
        inputs.push(out);
    }
    let output = match rhs {
        Some(r) => {
            let (labels, _) =
                letters(r).ok_or_else(|| bad("the output is not letters and '...'"))?;
            let out = expanded(&labels, broadcast_rank);
            if repeats(&out) {
                return Err(bad("an output label repeats"));
            }
            if let Some(l) = out.iter().find(|l| !inputs.iter().any(|t| t.contains(l))) {
                return Err(bad(&format!("output label {l:?} is in no term")));
            }
            out
        }
        None => {
            let mut out: Vec<Label> = (0..broadcast_rank).rev().map(Label::Broadcast).collect();
            let mut once: Vec<char> = ('a'..='z')
                .chain('A'..='Z')
                .filter(|&c| {
                    let n: usize = inputs
                        .iter()
                        .map(|t| t.iter().filter(|&&l| l == Label::Letter(c)).count())
                        .sum();
                    n == 1
                })
                .collect();
            once.sort_unstable();
            out.extend(once.into_iter().map(Label::Letter));
            out
        }
    };
    Ok(Parsed { inputs, output })
}

/// A term's labels, its `...` (`None`) standing for `hidden` broadcast axes.
fn expanded(letters: &[Option<char>], hidden: usize) -> Vec<Label> {
    let mut out = Vec::with_capacity(letters.len() + hidden);
    for l in letters {
        match l {
            Some(c) => out.push(Label::Letter(*c)),
            None => out.extend((0..hidden).rev().map(Label::Broadcast)),
        }
    }
    out
}

/// Whether a label occurs twice.
fn repeats(labels: &[Label]) -> bool {
    let mut seen = labels.to_vec();
    seen.sort();
    seen.windows(2).any(|w| w[0] == w[1])
}

/// A term's letters in order, `None` where `...` stands; `None` overall if it holds anything else or
/// more than one `...`.
fn letters(term: &str) -> Option<(Vec<Option<char>>, bool)> {
    let mut out = Vec::new();
    let mut rest = term;
    let mut ellipsis = false;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("...") {
            if ellipsis {
                return None;
            }
            ellipsis = true;
            out.push(None);
            rest = r;
        } else if c.is_ascii_alphabetic() {
            out.push(Some(c));
            rest = &rest[1..];
        } else {
            return None;
        }
    }
    Some((out, ellipsis))
}

/// An operand with its labels.
struct Term {
    a: ArrayD<f32>,
    labels: Vec<Label>,
}

impl Term {
    /// Sums away the labels not in `keep`.
    fn keep_only(mut self, keep: &[Label]) -> Term {
        let mut i = self.labels.len();
        while i > 0 {
            i -= 1;
            if !keep.contains(&self.labels[i]) {
                self.a = self.a.sum_axis(Axis(i));
                self.labels.remove(i);
            }
        }
        self
    }

    /// The array permuted to `order` (labels it has), in standard layout.
    fn arranged(&self, order: &[Label]) -> ArrayD<f32> {
        let perm: Vec<usize> = order
            .iter()
            .map(|l| {
                self.labels
                    .iter()
                    .position(|m| m == l)
                    .expect("label of the term")
            })
            .collect();
        self.a
            .view()
            .permuted_axes(IxDyn(&perm))
            .as_standard_layout()
            .into_owned()
    }

    fn size(&self, l: Label) -> usize {
        self.labels
            .iter()
            .position(|&m| m == l)
            .map_or(1, |i| self.a.shape()[i])
    }
}

/// Evaluates `equation` on float operands.
pub fn einsum(equation: &str, operands: &[&TensorView]) -> Result<Tensor> {
    let ranks: Vec<usize> = operands.iter().map(|t| t.rank()).collect();
    let parsed = parse(equation, &ranks)?;
    let mut terms = Vec::with_capacity(operands.len());
    for (t, labels) in operands.iter().zip(&parsed.inputs) {
        terms.push(Term {
            a: t.f32()?.to_owned(),
            labels: labels.clone(),
        });
    }
    // Every label's size, checked to broadcast (equal, or 1).
    let mut sizes: Vec<(Label, usize)> = Vec::new();
    for t in &terms {
        for (&l, &n) in t.labels.iter().zip(t.a.shape()) {
            match sizes.iter_mut().find(|(m, _)| *m == l) {
                Some((_, s)) if *s == n || n == 1 => {}
                Some((_, s)) if *s == 1 => *s = n,
                Some((_, s)) => {
                    return Err(Error::invalid(format!(
                        "Einsum '{equation}': label {l:?} is {s} and {n} long"
                    )))
                }
                None => sizes.push((l, n)),
            }
        }
    }
    let size = |l: Label| sizes.iter().find(|(m, _)| *m == l).map_or(1, |s| s.1);
    let mut terms = terms.into_iter();
    let mut acc = terms
        .next()
        .ok_or_else(|| Error::invalid("Einsum of no operands"))?;
    let rest: Vec<Term> = terms.collect();
    for (k, next) in rest.into_iter().enumerate() {
        // Labels something after this pair still reads.
        let later: Vec<Label> = parsed.inputs[k + 2..]
            .iter()
            .flatten()
            .chain(&parsed.output)
            .copied()
            .collect();
        let needed = |l: &Label, other: &Term| later.contains(l) || other.labels.contains(l);
        let keep_a: Vec<Label> = acc
            .labels
            .iter()
            .filter(|l| needed(l, &next))
            .copied()
            .collect();
        let keep_b: Vec<Label> = next
            .labels
            .iter()
            .filter(|l| needed(l, &acc))
            .copied()
            .collect();
        let (a, b) = (acc.keep_only(&keep_a), next.keep_only(&keep_b));
        let in_both = |l: &Label| a.labels.contains(l) && b.labels.contains(l);
        let batch: Vec<Label> = a
            .labels
            .iter()
            .filter(|l| in_both(l) && later.contains(l))
            .copied()
            .collect();
        let summed: Vec<Label> = a
            .labels
            .iter()
            .filter(|l| in_both(l) && !later.contains(l))
            .copied()
            .collect();
        let a_only: Vec<Label> = a.labels.iter().filter(|l| !in_both(l)).copied().collect();
        let b_only: Vec<Label> = b.labels.iter().filter(|l| !in_both(l)).copied().collect();
        let prod = |ls: &[Label]| ls.iter().map(|&l| size(l)).product::<usize>();
        let out_shape: Vec<usize> = batch
            .iter()
            .chain(&a_only)
            .chain(&b_only)
            .map(|&l| size(l))
            .collect();
        super::util::check_alloc(&out_shape, DType::F32)?;
        let (nb, m, kk, n) = (prod(&batch), prod(&a_only), prod(&summed), prod(&b_only));
        // Broadcast each operand's batch and summed axes to their full sizes.
        let full = |t: &Term, order: &[Label]| -> Result<ArrayD<f32>> {
            let shape: Vec<usize> = order
                .iter()
                .map(|&l| if t.size(l) == 1 { size(l) } else { t.size(l) })
                .collect();
            super::util::check_alloc(&shape, DType::F32)?;
            let arr = t.arranged(order);
            Ok(arr
                .broadcast(IxDyn(&shape))
                .ok_or_else(|| {
                    Error::invalid(format!("Einsum '{equation}': operands do not broadcast"))
                })?
                .as_standard_layout()
                .into_owned())
        };
        let order_a: Vec<Label> = batch
            .iter()
            .chain(&a_only)
            .chain(&summed)
            .copied()
            .collect();
        let order_b: Vec<Label> = batch
            .iter()
            .chain(&summed)
            .chain(&b_only)
            .copied()
            .collect();
        let (fa, fb) = (full(&a, &order_a)?, full(&b, &order_b)?);
        let (va, vb) = (
            fa.as_slice().expect("standard layout"),
            fb.as_slice().expect("standard layout"),
        );
        let mut out = vec![0.0f32; nb * m * n];
        for p in 0..nb {
            let (ap, bp) = (
                &va[p * m * kk..(p + 1) * m * kk],
                &vb[p * kk * n..(p + 1) * kk * n],
            );
            let op = &mut out[p * m * n..(p + 1) * m * n];
            fff_ops::matmul::gemm(
                fff_ops::matmul::MatRef::row_major(ap, m, kk),
                fff_ops::matmul::MatRef::row_major(bp, kk, n),
                op,
                1.0,
                0.0,
            );
        }
        let labels: Vec<Label> = batch
            .iter()
            .chain(&a_only)
            .chain(&b_only)
            .copied()
            .collect();
        let shape: Vec<usize> = labels.iter().map(|&l| size(l)).collect();
        acc = Term {
            a: ArrayD::from_shape_vec(IxDyn(&shape), out).expect("sizes multiply out"),
            labels,
        };
    }
    let acc = acc.keep_only(&parsed.output);
    let arr = acc.arranged(&parsed.output);
    // Output axes broadcast from 1 where only a size-1 operand axis had them.
    let shape: Vec<usize> = parsed.output.iter().map(|&l| size(l)).collect();
    super::util::check_alloc(&shape, DType::F32)?;
    let arr = if arr.shape() == shape.as_slice() {
        arr
    } else {
        arr.broadcast(IxDyn(&shape))
            .ok_or_else(|| {
                Error::invalid(format!("Einsum '{equation}': operands do not broadcast"))
            })?
            .as_standard_layout()
            .into_owned()
    };
    Ok(Tensor::F32(arr))
}

/// The shape rule of Einsum: each output axis is its label's axes broadcast together.
pub(super) fn infer(equation: &str, ins: Facts) -> Inferred {
    let shapes: Option<Vec<Vec<Dim>>> = (0..ins.len()).map(|i| shape_of(ins, i)).collect();
    let shape = match shapes {
        Some(ss) => {
            let ranks: Vec<usize> = ss.iter().map(Vec::len).collect();
            let p = parse(equation, &ranks).map_err(|e| e.to_string())?;
            let dim = |l: &Label| {
                let mut d = Dim::Known(1);
                for (s, ls) in ss.iter().zip(&p.inputs) {
                    for (x, m) in s.iter().zip(ls) {
                        if m == l {
                            d = Dim::broadcast(&d, x)?;
                        }
                    }
                }
                Ok::<Dim, String>(d)
            };
            Some(p.output.iter().map(dim).collect::<Result<_, _>>()?)
        }
        None => None,
    };
    Ok(vec![fact(Some(DType::F32), shape)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], seed: u32) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 97) as f32 / 17.0 - 2.5)
            .collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// The definition: every combination of label values, products summed into the output element.
    fn reference(eq: &str, ops: &[ArrayD<f32>]) -> ArrayD<f32> {
        let ranks: Vec<usize> = ops.iter().map(|a| a.ndim()).collect();
        let p = parse(eq, &ranks).unwrap();
        let mut labels: Vec<(Label, usize)> = vec![];
        for (a, ls) in ops.iter().zip(&p.inputs) {
            for (&l, &n) in ls.iter().zip(a.shape()) {
                match labels.iter_mut().find(|(m, _)| *m == l) {
                    Some((_, s)) => *s = (*s).max(n),
                    None => labels.push((l, n)),
                }
            }
        }
        let out_shape: Vec<usize> = p
            .output
            .iter()
            .map(|l| labels.iter().find(|(m, _)| m == l).unwrap().1)
            .collect();
        let mut out = ArrayD::<f32>::zeros(IxDyn(&out_shape));
        let total: usize = labels.iter().map(|l| l.1).product();
        for flat in 0..total {
            let mut rem = flat;
            let vals: Vec<usize> = labels
                .iter()
                .map(|&(_, n)| {
                    let v = rem % n;
                    rem /= n;
                    v
                })
                .collect();
            let value = |l: &Label| vals[labels.iter().position(|(m, _)| m == l).unwrap()];
            let mut prod = 1.0f32;
            for (a, ls) in ops.iter().zip(&p.inputs) {
                let idx: Vec<usize> = ls
                    .iter()
                    .zip(a.shape())
                    .map(|(l, &n)| if n == 1 { 0 } else { value(l) })
                    .collect();
                prod *= a[IxDyn(&idx)];
            }
            let oi: Vec<usize> = p.output.iter().map(value).collect();
            out[IxDyn(&oi)] += prod;
        }
        out
    }

    fn check(eq: &str, shapes: &[&[usize]]) {
        let ops: Vec<ArrayD<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| t(s, i as u32 * 7 + 1))
            .collect();
        let views: Vec<Tensor> = ops.iter().map(|a| Tensor::F32(a.clone())).collect();
        let views: Vec<TensorView> = views.iter().map(|t| t.view()).collect();
        let refs: Vec<&TensorView> = views.iter().collect();
        let got = match einsum(eq, &refs).unwrap() {
            Tensor::F32(a) => a,
            _ => unreachable!(),
        };
        let want = reference(eq, &ops);
        assert_eq!(got.shape(), want.shape(), "{eq}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                "{eq}: {g} against {w}"
            );
        }
    }

    #[test]
    fn equations_match_the_definition() {
        check("ij,jk->ik", &[&[3, 4], &[4, 5]]);
        check("nt,ntd->nd", &[&[6, 4], &[6, 4, 5]]);
        check("bhid,bhjd->bhij", &[&[2, 3, 4, 5], &[2, 3, 6, 5]]);
        check("bhij,bhjd->bihd", &[&[2, 3, 4, 6], &[2, 3, 6, 5]]);
        check("ij->ji", &[&[3, 4]]);
        check("ij->", &[&[3, 4]]);
        check("ij", &[&[3, 4]]);
        check("ij,ij->ij", &[&[3, 4], &[3, 4]]);
        check("i,j->ij", &[&[3], &[4]]);
        check("ba,ca", &[&[3, 4], &[5, 4]]);
        check("...ij,...jk->...ik", &[&[2, 3, 4], &[4, 5]]);
        check("...d,...d->...", &[&[2, 1, 3, 5], &[4, 3, 5]]);
        check("ij,jk,kl->il", &[&[2, 3], &[3, 4], &[4, 5]]);
        check("abc,cd,ae->bde", &[&[2, 3, 4], &[4, 5], &[2, 3]]);
        check("ik,jk->ijk", &[&[1, 4], &[3, 4]]);
    }

    #[test]
    fn bad_equations_are_errors() {
        let a = Tensor::F32(t(&[3, 4], 1));
        let v = a.view();
        for eq in [
            "ij,jk->ik",
            "ijk->i",
            "ii->i",
            "ij->iq",
            "i1->i",
            "ij->ii",
            "i...j...->ij",
        ] {
            assert!(einsum(eq, &[&v]).is_err(), "{eq}");
        }
        let b = Tensor::F32(t(&[5, 6], 2));
        assert!(
            einsum("ij,jk->ik", &[&v, &b.view()]).is_err(),
            "mismatched lengths"
        );
        let ints = Tensor::I64(ArrayD::zeros(IxDyn(&[3, 4])));
        assert!(einsum("ij->j", &[&ints.view()]).is_err(), "integers");
        // An outer product too large to allocate is an error, not an abort.
        let long = Tensor::F32(ArrayD::zeros(IxDyn(&[1 << 22])));
        let lv = long.view();
        assert!(einsum("i,j,k->ijk", &[&lv, &lv, &lv]).is_err(), "too large");
    }
}
