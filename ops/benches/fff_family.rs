//! The FFF family at width 768 against a dense 768 -> 4095 -> 768 layer, measured in the same run.
//!
//!   cargo bench -p fff-ops --bench fff_family [-- ROWS,ROWS,... THREADS,THREADS,... [SHAPES] [bf16]]
//!
//! With `bf16`, every tree shape is also timed with its weights rounded to bf16 (rows labelled
//! `TxD bf16`), and the bf16 layer's error against the f32 layer is printed first.
//!
//! Shapes are `trees x depth` with `trees * (2^(depth+1) - 1) = 4095` neurons... or as near as the
//! family comes (3072x0 is the 3072-wide dense layer of BERT-base). Inputs vary from run to run: each run
//! reads the next of several input sets, together larger than the caches, so no run finds its rows'
//! paths already cached. Prints a Markdown table: median time per call, per row, and the speed-up over
//! the dense 4095 layer at the same rows and threads, next to the ideal (neurons / neurons used per row).

use std::time::{Duration, Instant};

use fff_ops::activation::Activation;
use fff_ops::element::{to_bf16, to_f32, Bf16};
use fff_ops::fff::{fff_forward, fff_reference, Branch, FffLayer, FffShape, FffWeights};

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

    /// Standard normal values (Box-Muller).
    fn normal(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let u = self.vec(n + 1, 0.5);
        (0..n)
            .map(|i| {
                let (a, b) = ((u[i] + 0.5).max(1e-7), u[i + 1] + 0.5);
                (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos() * scale
            })
            .collect()
    }
}

struct Layer {
    shape: FffShape,
    w_in: Pages,
    b_in: Vec<f32>,
    w_out: Pages,
    /// `w_in` and `w_out` rounded to bf16, where asked for.
    bf16: Option<(Pages, Pages)>,
}

/// Values in anonymous memory, page-aligned and backed by huge pages where the kernel allows, as the
/// runtime keeps weights and large buffers.
struct Pages(memmap2::MmapMut, usize);

impl Pages {
    fn new(v: Vec<f32>) -> Pages {
        Pages::from_bytes(v.len() * 4, v.iter().flat_map(|x| x.to_ne_bytes()), v.len())
    }

    fn new_bf16(v: &[f32]) -> Pages {
        let b = to_bf16(v);
        Pages::from_bytes(
            b.len() * 2,
            b.iter().flat_map(|x| x.0.to_ne_bytes()),
            b.len(),
        )
    }

    fn from_bytes(size: usize, bytes: impl Iterator<Item = u8>, len: usize) -> Pages {
        let mut m = memmap2::MmapMut::map_anon(size.max(1)).expect("anonymous map");
        #[cfg(target_os = "linux")]
        let _ = m.advise(memmap2::Advice::HugePage);
        for (dst, src) in m.iter_mut().zip(bytes) {
            *dst = src;
        }
        Pages(m, len)
    }

    fn get(&self) -> &[f32] {
        assert_eq!(self.0.len(), (self.1 * 4).max(1));
        // SAFETY: the map holds `self.1` initialised f32 values (checked by size) and is page-aligned.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<f32>(), self.1) }
    }

    fn get_mut(&mut self) -> &mut [f32] {
        assert_eq!(self.0.len(), (self.1 * 4).max(1));
        // SAFETY: as for `get`, through the map's unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), self.1) }
    }

    fn get_bf16(&self) -> &[Bf16] {
        assert_eq!(self.0.len(), (self.1 * 2).max(1));
        // SAFETY: the map holds `self.1` initialised bf16 values (checked by size) and is
        // page-aligned; `Bf16` is a transparent `u16`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<Bf16>(), self.1) }
    }
}

impl Layer {
    fn new(trees: usize, depth: usize, bf16: bool, rng: &mut Rng) -> Layer {
        let shape = FffShape {
            d_in: D,
            d_out: D,
            depth,
            trees,
        };
        let k = shape.total_nodes();
        let (w_in, b_in, w_out) = (
            rng.vec(k * D, (3.0 / D as f32).sqrt()),
            rng.vec(k, 0.1),
            rng.vec(k * D, 0.05),
        );
        Layer {
            shape,
            bf16: (bf16 && depth > 0).then(|| (Pages::new_bf16(&w_in), Pages::new_bf16(&w_out))),
            w_in: Pages::new(w_in),
            b_in,
            w_out: Pages::new(w_out),
        }
    }

    fn run_bf16(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (w_in, w_out) = self.bf16.as_ref().expect("bf16 weights");
        let layer = FffLayer {
            shape: self.shape,
            act: Activation::GeluErf,
            branch: Branch::Greater,
            w: FffWeights {
                w_in: w_in.get_bf16(),
                b_in: Some(&self.b_in),
                w_out: w_out.get_bf16(),
                b_out: None,
            },
        };
        fff_forward(&layer, x, rows, out);
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
fn time(
    run: impl Fn(&[f32], usize, &mut [f32]),
    inputs: &[Pages],
    rows: usize,
    out: &mut [f32],
) -> f64 {
    run(inputs[0].get(), rows, out);
    let mut times = Vec::new();
    let start = Instant::now();
    let mut i = 1;
    while times.len() < 3 || (start.elapsed() < Duration::from_millis(500) && times.len() < 200) {
        let x = inputs[i % inputs.len()].get();
        let t = Instant::now();
        run(x, rows, out);
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
    let bf16 = args.iter().any(|a| a == "bf16");
    let args: Vec<String> = args.into_iter().filter(|a| a != "bf16").collect();
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
    if bf16 {
        for &(t, d) in family.iter().filter(|&&(_, d)| d > 0) {
            bf16_accuracy(t, d, &mut rng);
        }
    }
    let dense = Layer::new(4095, 0, false, &mut rng);
    let layers: Vec<Layer> = family
        .iter()
        .map(|&(t, d)| Layer::new(t, d, bf16, &mut rng))
        .collect();
    println!(
        "| shape | rows | threads | ms per call | µs per row | speed-up vs dense 4095 | ideal |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &rows in &rows_list {
        // Enough input sets to exceed the caches (at least 64 MiB in all), at most 16.
        let sets = (64 << 20) / (rows * D * 4) + 1;
        // Inputs and output on huge pages, as the runtime keeps large buffers.
        let inputs: Vec<Pages> = (0..sets.min(16))
            .map(|_| Pages::new(rng.vec(rows * D, 2.0)))
            .collect();
        let mut out = Pages::new(vec![0.0f32; rows * D]);
        let out = out.get_mut();
        for &threads in &threads_list {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let dense_t = pool.install(|| time(|x, r, o| dense.run(x, r, o), &inputs, rows, out));
            println!(
                "| dense 4095 | {rows} | {threads} | {:.3} | {:.2} | 1.0x | 1.0x |",
                dense_t * 1e3,
                dense_t * 1e6 / rows as f64
            );
            for l in &layers {
                let used = l.shape.trees * (l.shape.depth + 1);
                let t = pool.install(|| time(|x, r, o| l.run(x, r, o), &inputs, rows, out));
                let mut kinds = vec![("", t)];
                if l.bf16.is_some() {
                    let t =
                        pool.install(|| time(|x, r, o| l.run_bf16(x, r, o), &inputs, rows, out));
                    kinds.push((" bf16", t));
                }
                for (kind, t) in kinds {
                    println!(
                        "| {}x{}{kind} | {rows} | {threads} | {:.3} | {:.2} | {:.1}x | {:.1}x |",
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
}

/// The error bf16 weights cost: a `trees x depth` layer with weights of the usual scale (normal,
/// std 1/sqrt(768)) and standard normal inputs, once with f32 weights and once with them rounded to
/// bf16 (both through `fff_forward`). Rows that take another path (a logit changes sign) are counted;
/// their outputs differ by whole neurons.
fn bf16_accuracy(trees: usize, depth: usize, rng: &mut Rng) {
    let shape = FffShape {
        d_in: D,
        d_out: D,
        depth,
        trees,
    };
    let (k, rows) = (shape.total_nodes(), 2048);
    let scale = 1.0 / (D as f32).sqrt();
    let (w_in, w_out, b_in) = (
        rng.normal(k * D, scale),
        rng.normal(k * D, scale),
        rng.normal(k, 0.1),
    );
    let x = rng.normal(rows * D, 1.0);
    let layer = |w_in, w_out| FffLayer {
        shape,
        act: Activation::GeluErf,
        branch: Branch::Greater,
        w: FffWeights {
            w_in,
            b_in: Some(&b_in),
            w_out,
            b_out: None,
        },
    };
    let (in16, out16) = (to_bf16(&w_in), to_bf16(&w_out));
    let (mut want, mut got) = (vec![0.0f32; rows * D], vec![0.0f32; rows * D]);
    fff_forward(&layer(&w_in, &w_out), &x, rows, &mut want);
    let l16 = FffLayer {
        shape,
        act: Activation::GeluErf,
        branch: Branch::Greater,
        w: FffWeights {
            w_in: &in16,
            b_in: Some(&b_in),
            w_out: &out16,
            b_out: None,
        },
    };
    fff_forward(&l16, &x, rows, &mut got);
    // Rows whose path changes: outputs of the f32 reference with only `w_out` rounded take the f32
    // paths; a row whose bf16 output differs from that by more than rounding took another path.
    let wide_out = to_f32(&out16);
    let mut same_path = vec![0.0f32; rows * D];
    fff_reference(&layer(&w_in, &wide_out), &x, rows, &mut same_path);
    let (mut max_abs, mut max_y, mut rel) = (0.0f32, 0.0f32, Vec::new());
    let mut flipped = 0;
    for r in 0..rows {
        let (g, w, s) = (
            &got[r * D..(r + 1) * D],
            &want[r * D..(r + 1) * D],
            &same_path[r * D..(r + 1) * D],
        );
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|a| a * a).sum::<f32>().sqrt();
        let diff = norm(&mut g.iter().zip(w).map(|(a, b)| a - b));
        rel.push(diff / norm(&mut w.iter().copied()));
        for (a, b) in g.iter().zip(w) {
            max_abs = max_abs.max((a - b).abs());
            max_y = max_y.max(b.abs());
        }
        let off_path = norm(&mut g.iter().zip(s).map(|(a, b)| a - b));
        flipped += usize::from(off_path > 1e-2 * norm(&mut s.iter().copied()));
    }
    rel.sort_by(f32::total_cmp);
    println!(
        "{trees}x{depth} bf16 vs f32 weights ({rows} rows, weights N(0, 1/{D}), inputs N(0, 1)): \
         max abs error {max_abs:.2e} (max |y| {max_y:.2}, {:.2e} of it); per-row relative L2 error \
         median {:.2e}, 99th percentile {:.2e}, max {:.2e}; {flipped} rows ({:.1}%) take another path",
        max_abs / max_y,
        rel[rows / 2],
        rel[rows * 99 / 100],
        rel[rows - 1],
        100.0 * flipped as f64 / rows as f64
    );
    println!();
}
