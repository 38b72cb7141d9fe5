//! Transposition: a row-major array with its axes permuted, written out row-major.
//!
//! Attention's exports transpose `[batch, seq, heads, head_dim]` to `[batch, heads, seq, head_dim]` and
//! back around every attention, which keeps the last axis in place: the output is then runs of
//! `head_dim` contiguous input elements, copied a run at a time instead of an element at a time through
//! a general strided iterator (36 such transposes of BERT-base at 128 tokens took 2.2 ms that way).

/// Appends to `out` the elements of `src` (row-major, of `shape`) with its axes permuted: output axis
/// `i` is input axis `perm[i]`, and the output is written row-major. Axes that stay next to each other
/// in order are merged first, so the copy goes a run of contiguous elements at a time wherever the last
/// input axes stay last. Panics unless `perm` is a permutation of `shape`'s axes and `src` holds
/// `shape`'s elements.
pub fn permute<T: Copy>(src: &[T], shape: &[usize], perm: &[usize], out: &mut Vec<T>) {
    let rank = shape.len();
    assert_eq!(
        perm.len(),
        rank,
        "permute: {perm:?} is not a permutation of {rank} axes"
    );
    let mut seen = vec![false; rank];
    for &a in perm {
        assert!(
            a < rank && !std::mem::replace(&mut seen[a], true),
            "permute: {perm:?} is not a permutation"
        );
    }
    assert_eq!(
        src.len(),
        shape.iter().product::<usize>(),
        "permute: src does not hold {shape:?}"
    );
    if src.is_empty() {
        return;
    }
    let (dims, strides) = merged(shape, perm);
    out.reserve(src.len());
    // The last merged axis is contiguous in the input when its stride is 1: copied as runs.
    let last = dims.len() - 1;
    let (run, run_stride) = (dims[last], strides[last]);
    let outer = &dims[..last];
    let mut index = vec![0usize; outer.len()];
    let mut at = 0usize;
    loop {
        if run_stride == 1 {
            out.extend_from_slice(&src[at..at + run]);
        } else {
            out.extend((0..run).map(|j| src[at + j * run_stride]));
        }
        // Next output position of the outer axes, last fastest.
        let mut axis = outer.len();
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            at += strides[axis];
            if index[axis] < outer[axis] {
                break;
            }
            at -= strides[axis] * outer[axis];
            index[axis] = 0;
        }
    }
}

/// The output's axes (sizes and input strides, in output order) with axes of size 1 dropped and
/// neighbours that are neighbours in the input too merged into one.
fn merged(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let rank = shape.len();
    let mut input_strides = vec![1usize; rank];
    for a in (0..rank.saturating_sub(1)).rev() {
        input_strides[a] = input_strides[a + 1] * shape[a + 1];
    }
    let mut dims: Vec<usize> = Vec::with_capacity(rank);
    let mut strides: Vec<usize> = Vec::with_capacity(rank);
    for &a in perm {
        let (n, s) = (shape[a], input_strides[a]);
        if n == 1 {
            continue;
        }
        match (dims.last_mut(), strides.last_mut()) {
            // The previous output axis steps over exactly this one: one axis of both.
            (Some(d), Some(st)) if *st == s * n => {
                *d *= n;
                *st = s;
            }
            _ => {
                dims.push(n);
                strides.push(s);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        strides.push(1);
    }
    (dims, strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element by element from the definition: output index -> input index.
    fn reference(src: &[u32], shape: &[usize], perm: &[usize]) -> Vec<u32> {
        let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut flat| {
                let mut out_index = vec![0; perm.len()];
                for i in (0..perm.len()).rev() {
                    out_index[i] = flat % out_shape[i];
                    flat /= out_shape[i];
                }
                let mut input = 0;
                for (a, &size) in shape.iter().enumerate() {
                    let i = perm.iter().position(|&p| p == a).unwrap();
                    input = input * size + out_index[i];
                }
                src[input]
            })
            .collect()
    }

    fn permutations(rank: usize) -> Vec<Vec<usize>> {
        if rank == 0 {
            return vec![vec![]];
        }
        let mut all = vec![];
        for p in permutations(rank - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, rank - 1);
                all.push(q);
            }
        }
        all
    }

    #[test]
    fn every_permutation_of_several_shapes_matches_the_definition() {
        let shapes: &[&[usize]] = &[
            &[],
            &[5],
            &[3, 4],
            &[1, 7, 1],
            &[2, 3, 4],
            &[2, 5, 3, 7],
            &[1, 9, 4, 16],
            &[3, 1, 2, 1, 5],
            &[2, 0, 3],
        ];
        for shape in shapes {
            let n: usize = shape.iter().product();
            let src: Vec<u32> = (0..n as u32).collect();
            for perm in permutations(shape.len()) {
                let mut got = vec![];
                permute(&src, shape, &perm, &mut got);
                assert_eq!(got, reference(&src, shape, &perm), "{shape:?} by {perm:?}");
            }
        }
    }

    #[test]
    fn appends_after_what_the_output_holds() {
        let mut out = vec![7u32];
        permute(&[1, 2, 3, 4, 5, 6], &[2, 3], &[1, 0], &mut out);
        assert_eq!(out, [7, 1, 4, 2, 5, 3, 6]);
    }

    #[test]
    #[should_panic(expected = "not a permutation")]
    fn a_repeated_axis_is_refused() {
        permute(&[1u8, 2, 3, 4], &[2, 2], &[0, 0], &mut vec![]);
    }
}
