//! `fff-models`: writes the models crate's benchmark models as ONNX files, and random inputs as `.npy`.
//!
//!   fff-models layer  --width 768 --ff fff:1x11 -o layer.onnx
//!   fff-models layer  --width 768 --ff dense:4095 -o dense.onnx
//!   fff-models encoder --hidden 768 --heads 12 --layers 4 --ff fff:1x11 -o encoder.onnx
//!   fff-models stack  --width 16 --ff dense:32 --blocks 800 -o stack.onnx
//!   fff-models npy --shape 1x128x768 -o x.npy

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fff_models::builders::{
    encoder_model, ff_layer_model, residual_stack_model, Defects, EncoderConfig, Ff,
};
use fff_models::rng::Rng;

#[derive(Parser)]
#[command(
    name = "fff-models",
    about = "Writes benchmark models (ONNX) and random inputs (.npy)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One feedforward layer: input `x` [batch, seq, width], output `y`.
    Layer {
        #[arg(long, default_value_t = 768)]
        width: usize,
        /// `fff:TREESxDEPTH` (masking form) or `dense:WIDTH`.
        #[arg(long)]
        ff: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// A BERT-style encoder: inputs `input_ids`, `attention_mask` [batch, seq], output `hidden`.
    Encoder {
        #[arg(long, default_value_t = 768)]
        hidden: usize,
        #[arg(long, default_value_t = 12)]
        heads: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// `fff:TREESxDEPTH` (masking form) or `dense:WIDTH`, for every layer.
        #[arg(long)]
        ff: String,
        #[arg(long, default_value_t = 30522)]
        vocab: usize,
        #[arg(long, default_value_t = 512)]
        max_positions: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// A stack of residual feedforward blocks, `x = x + ff(x)`: input `x` [batch, seq, width],
    /// output `y`.
    Stack {
        #[arg(long, default_value_t = 16)]
        width: usize,
        /// `fff:TREESxDEPTH` (masking form) or `dense:WIDTH`, for every block.
        #[arg(long)]
        ff: String,
        #[arg(long)]
        blocks: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// A float32 array of standard-normal values.
    Npy {
        /// `D0xD1x...`
        #[arg(long)]
        shape: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn parse_ff(s: &str) -> Result<Ff> {
    let parse = |v: &str| {
        v.parse::<usize>()
            .with_context(|| format!("'{v}' is not a number"))
    };
    match s.split_once(':') {
        Some(("dense", w)) => Ok(Ff::Dense { width: parse(w)? }),
        Some(("fff", td)) => {
            let (t, d) = td.split_once('x').context("fff:TREESxDEPTH")?;
            Ok(Ff::Fff {
                trees: parse(t)?,
                depth: parse(d)?,
            })
        }
        _ => bail!("--ff is fff:TREESxDEPTH or dense:WIDTH, not '{s}'"),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Layer {
            width,
            ff,
            seed,
            output,
        } => {
            let bytes = ff_layer_model(width, parse_ff(&ff)?, seed, Defects::default());
            std::fs::write(&output, bytes)
                .with_context(|| format!("cannot write {}", output.display()))
        }
        Command::Encoder {
            hidden,
            heads,
            layers,
            ff,
            vocab,
            max_positions,
            seed,
            output,
        } => {
            if heads == 0 || hidden % heads != 0 {
                bail!("--hidden {hidden} is not a multiple of --heads {heads}");
            }
            let ff = parse_ff(&ff)?;
            let config = EncoderConfig {
                vocab,
                max_positions,
                hidden,
                heads,
                layers: vec![ff; layers],
                seed,
            };
            std::fs::write(&output, encoder_model(&config))
                .with_context(|| format!("cannot write {}", output.display()))
        }
        Command::Stack {
            width,
            ff,
            blocks,
            seed,
            output,
        } => {
            let bytes = residual_stack_model(width, parse_ff(&ff)?, blocks, seed);
            std::fs::write(&output, bytes)
                .with_context(|| format!("cannot write {}", output.display()))
        }
        Command::Npy {
            shape,
            seed,
            output,
        } => {
            let dims: Vec<u64> = shape
                .split('x')
                .map(|d| {
                    d.parse::<u64>()
                        .with_context(|| format!("bad shape '{shape}'"))
                })
                .collect::<Result<_>>()?;
            let n: u64 = dims.iter().product();
            let mut rng = Rng::new(seed);
            let data: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let file = std::fs::File::create(&output)
                .with_context(|| format!("cannot write {}", output.display()))?;
            use npyz::WriterBuilder;
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&dims)
                .writer(std::io::BufWriter::new(file))
                .begin_nd()?;
            w.extend(data)?;
            w.finish()?;
            Ok(())
        }
    }
}
