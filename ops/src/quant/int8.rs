//! int8 products: weights quantised per output column, activations per row.
