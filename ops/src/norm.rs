//! Layer normalisation over the last axis.

/// Normalises each row of `x` (`rows x width`, row-major) into `out`:
/// `out = (x - mean) / sqrt(var + eps) * scale + bias`, the variance being the biased one, as ONNX's
/// `LayerNormalization` and PyTorch's `layer_norm` compute it. `bias` may be absent.
pub fn layer_norm(
    x: &[f32],
    width: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    assert_eq!(x.len(), out.len());
    assert_eq!(scale.len(), width);
    if width == 0 {
        return;
    }
    for (row, out_row) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (i, (o, &v)) in out_row.iter_mut().zip(row).enumerate() {
            let b = bias.map_or(0.0, |b| b[i]);
            *o = ((v as f64 - mean) * inv) as f32 * scale[i] + b;
        }
    }
}
