//! bfloat16 products: bf16 weights, activations rounded to bf16 per call, sums in f32.
