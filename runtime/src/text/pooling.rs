//! Pooling token vectors into one vector per text, and L2 normalisation, with sentence-transformers'
//! definitions: mean over the tokens the mask keeps (divided by at least 1e-9), maximum over them,
//! or the first token; `x / max(‖x‖, 1e-12)`.

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};

use super::config::Pooling;
use crate::error::{Error, Result};

/// Pools `tokens` `[batch, seq, width]` with `mask` `[batch, seq]` (nonzero for a real token).
/// `Pooling::None` is refused: it keeps the token vectors.
pub fn pool(
    tokens: ArrayView3<f32>,
    mask: ArrayView2<i64>,
    pooling: Pooling,
) -> Result<Array2<f32>> {
    let (batch, seq, width) = tokens.dim();
    if mask.dim() != (batch, seq) {
        return Err(Error::invalid(format!(
            "the mask is {:?} but the token vectors are [{batch}, {seq}, {width}]",
            mask.shape()
        )));
    }
    let mut out = Array2::<f32>::zeros((batch, width));
    for (b, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        let text = tokens.index_axis(Axis(0), b);
        let text = &text;
        let kept = || {
            (0..seq)
                .filter(move |&t| mask[[b, t]] != 0)
                .map(move |t| text.index_axis(Axis(0), t))
        };
        match pooling {
            Pooling::Cls => row.assign(&text.index_axis(Axis(0), 0)),
            Pooling::Mean => {
                let mut sum = vec![0f64; width];
                let mut count = 0usize;
                for v in kept() {
                    count += 1;
                    for (s, x) in sum.iter_mut().zip(v) {
                        *s += f64::from(*x);
                    }
                }
                let count = (count as f64).max(1e-9);
                for (o, s) in row.iter_mut().zip(sum) {
                    *o = (s / count) as f32;
                }
            }
            Pooling::Max => {
                row.fill(f32::NEG_INFINITY);
                let mut any = false;
                for v in kept() {
                    any = true;
                    for (o, x) in row.iter_mut().zip(v) {
                        *o = o.max(*x);
                    }
                }
                if !any {
                    // sentence-transformers fills masked tokens with -1e9 before its maximum.
                    row.fill(-1e9);
                }
            }
            Pooling::None => {
                return Err(Error::invalid(
                    "pooling 'none' keeps one vector per token, not one per text",
                ))
            }
        }
    }
    Ok(out)
}

/// Divides every row by its L2 norm (by 1e-12 at least, so a zero row stays zero).
pub fn normalize_rows(rows: &mut Array2<f32>) {
    for mut row in rows.axis_iter_mut(Axis(0)) {
        let norm = row
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = 1.0 / norm.max(1e-12);
        row.mapv_inplace(|x| (f64::from(x) * scale) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    fn tokens() -> Array3<f32> {
        array![[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]]
    }

    #[test]
    fn pools_over_the_kept_tokens_only() {
        let mask = array![[1i64, 1, 0]];
        let t = tokens();
        assert_eq!(
            pool(t.view(), mask.view(), Pooling::Cls).unwrap(),
            array![[1.0, 2.0]]
        );
        assert_eq!(
            pool(t.view(), mask.view(), Pooling::Mean).unwrap(),
            array![[2.0, -1.0]]
        );
        assert_eq!(
            pool(t.view(), mask.view(), Pooling::Max).unwrap(),
            array![[3.0, 2.0]]
        );
        assert!(pool(t.view(), mask.view(), Pooling::None).is_err());
        assert!(pool(t.view(), array![[1i64, 1]].view(), Pooling::Mean).is_err());
    }

    #[test]
    fn normalises_to_unit_length_and_keeps_zero_rows() {
        let mut x = array![[3.0f32, 4.0], [0.0, 0.0]];
        normalize_rows(&mut x);
        assert_eq!(x, array![[0.6, 0.8], [0.0, 0.0]]);
    }
}
