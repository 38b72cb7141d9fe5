//! The FFF family at width 768 against a dense 768 -> 4095 -> 768 layer, measured in the same run.
//!
//!   cargo bench -p fff-ops --bench fff_family [-- ROWS,ROWS,... THREADS,THREADS,... [SHAPES]]
//!
//! Shapes are `trees x depth` with `trees * (2^(depth+1) - 1) = 4095` neurons... or as near as the
//! family comes (3072x0 is the 3072-wide dense layer of BERT-base). Inputs vary from run to run: each run
//! reads the next of several input sets, together larger than the caches, so no run finds its rows'
//! paths already cached. Prints a Markdown table: median time per call, per row, and the speed-up over
//! the dense 4095 layer at the same rows and threads, next to the ideal (neurons / neurons used per row).

use std::time::{Duration, Instant};

use fff_ops::activation::Activation;
use fff_ops::fff::{fff_forward, Branch, FffLayer, FffShape, FffWeights};

const D: usize = 768;
const FAMILY: &[(usize, usize)] = &[
    (3072, 0),
    (1536, 1),
    (512, 2),
    (256, 3),
    (128, 4),
    (64, 5),
    (32, 6),
    (16, 7),
    (8, 8),
    (4, 9),
    (2, 10),
    (1, 11),
];

struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

struct Layer {
    shape: FffShape,
    w_in: Weights,
    b_in: Vec<f32>,
    w_out: Weights,
}

/// Weights in anonymous memory backed by huge pages where the kernel allows, as the runtime keeps them.
struct Weights(memmap2::MmapMut, usize);

impl Weights {
    fn new(v: Vec<f32>) -> Weights {
        let bytes = v.len() * 4;
        let mut m = memmap2::MmapMut::map_anon(bytes.max(1)).expect("anonymous map");
        #[cfg(target_os = "linux")]
        let _ = m.advise(memmap2::Advice::HugePage);
        for (dst, src) in m.chunks_exact_mut(4).zip(&v) {
            dst.copy_from_slice(&src.to_ne_bytes());
        }
        Weights(m, v.len())
    }

    fn get(&self) -> &[f32] {
        // SAFETY: the map holds `self.1` initialised f32 values and is page-aligned.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<f32>(), self.1) }
    }
}

impl Layer {
    fn new(trees: usize, depth: usize, rng: &mut Rng) -> Layer {
        let shape = FffShape {
            d_in: D,
            d_out: D,
            depth,
            trees,
        };
        let k = shape.total_nodes();
        Layer {
            shape,
            w_in: Weights::new(rng.vec(k * D, (3.0 / D as f32).sqrt())),
            b_in: rng.vec(k, 0.1),
            w_out: Weights::new(rng.vec(k * D, 0.05)),
        }
    }

    fn run(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let w = FffWeights {
            w_in: self.w_in.get(),
            b_in: Some(&self.b_in),
            w_out: self.w_out.get(),
            b_out: None,
        };
        let layer = FffLayer {
            shape: self.shape,
            act: Activation::GeluErf,
            branch: Branch::Greater,
            w,
        };
        fff_forward(&layer, x, rows, out);
    }
}

/// Median seconds per call: at least 3 calls, more while under half a second in all.
fn time(layer: &Layer, inputs: &[Vec<f32>], rows: usize, out: &mut [f32]) -> f64 {
    layer.run(&inputs[0], rows, out);
    let mut times = Vec::new();
    let start = Instant::now();
    let mut i = 1;
    while times.len() < 3 || (start.elapsed() < Duration::from_millis(500) && times.len() < 200) {
        let x = &inputs[i % inputs.len()];
        let t = Instant::now();
        layer.run(x, rows, out);
        times.push(t.elapsed().as_secs_f64());
        i += 1;
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn list(arg: Option<&String>, default: &[usize]) -> Vec<usize> {
    arg.map_or(default.to_vec(), |s| {
        s.split(',').map(|v| v.parse().expect("a number")).collect()
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rows_list = list(args.first(), &[1, 128, 2048, 16384]);
    let threads_list = list(args.get(1), &[1, 2]);
    let family: Vec<(usize, usize)> = match args.get(2) {
        Some(s) => s
            .split(',')
            .map(|p| {
                let (t, d) = p.split_once('x').expect("TREESxDEPTH");
                (t.parse().unwrap(), d.parse().unwrap())
            })
            .collect(),
        None => FAMILY.to_vec(),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let dense = Layer::new(4095, 0, &mut rng);
    let layers: Vec<Layer> = family
        .iter()
        .map(|&(t, d)| Layer::new(t, d, &mut rng))
        .collect();
    println!(
        "| shape | rows | threads | ms per call | µs per row | speed-up vs dense 4095 | ideal |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &rows in &rows_list {
        // Enough input sets to exceed the caches (at least 64 MiB in all), at most 16.
        let sets = (64 << 20) / (rows * D * 4) + 1;
        let inputs: Vec<Vec<f32>> = (0..sets.min(16)).map(|_| rng.vec(rows * D, 2.0)).collect();
        let mut out = vec![0.0f32; rows * D];
        for &threads in &threads_list {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let dense_t = pool.install(|| time(&dense, &inputs, rows, &mut out));
            println!(
                "| dense 4095 | {rows} | {threads} | {:.3} | {:.2} | 1.0x | 1.0x |",
                dense_t * 1e3,
                dense_t * 1e6 / rows as f64
            );
            for l in &layers {
                let t = pool.install(|| time(l, &inputs, rows, &mut out));
                let used = l.shape.trees * (l.shape.depth + 1);
                println!(
                    "| {}x{} | {rows} | {threads} | {:.3} | {:.2} | {:.1}x | {:.1}x |",
                    l.shape.trees,
                    l.shape.depth,
                    t * 1e3,
                    t * 1e6 / rows as f64,
                    dense_t / t,
                    4095.0 / used as f64
                );
            }
        }
    }
}
