//! A loaded model: the plan's graph plus its weights, memory-mapped from the `.fff` file. `Model` is
//! `Send + Sync`; any number of threads may call [`Model::run`] at once.

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::{ArrayViewD, IxDyn};

use crate::buffers::{recycle_into, with_recycler, Recycler};
use crate::error::{Error, Result};
use crate::inputs::{self, RunInputs};
use crate::opset::eval;
use crate::opset::in_place::{self, InPlace};
use crate::plan::{self, Dim, PlanGraph, PlanInput, PlanNode};
use crate::pool_choice::PoolChoice;
use crate::tensor::{Bf16, DType, Tensor, TensorView};

/// The bytes of a plan file: mapped from disk, or owned (8-byte aligned) when built from memory.
enum PlanBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u64>, usize),
}

impl PlanBytes {
    /// Gives the whole pages inside `range` back to the system when they are mapped from the file:
    /// for bytes no view will read again (panels repacked at load), which would otherwise stay
    /// resident beside their copy. A hint; failures change nothing.
    fn release(&self, range: Range<usize>) {
        #[cfg(unix)]
        if let PlanBytes::Mapped(m) = self {
            const PAGE: usize = 4096;
            let (start, end) = (range.start.next_multiple_of(PAGE), range.end / PAGE * PAGE);
            if end > start && end <= m.len() {
                // SAFETY: the map is read-only and private, of a file we rely on not changing (see
                // `Model::load_with`), so dropping its pages loses nothing: a later read faults the
                // same bytes back in from the file. The range lies inside the map.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            PlanBytes::Mapped(m) => m,
            PlanBytes::Owned(words, len) => {
                // SAFETY: a Vec<u64> of `words.len()` elements owns `8 * words.len() >= len` initialised
                // bytes; u8 has no alignment or validity requirements.
                unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) }
            }
        }
    }
}

/// The whole of `file`, read into an 8-byte-aligned buffer as [`Model::from_bytes_with`] makes (the
/// bytes go straight into it). A buffer the size of the file that cannot be had is an error, not an
/// abort.
fn read_aligned(mut file: std::fs::File) -> std::io::Result<PlanBytes> {
    use std::io::Read;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| {
        std::io::Error::other("the file is larger than this machine's address space")
    })?;
    let mut words: Vec<u64> = Vec::new();
    words.try_reserve_exact(len.div_ceil(8)).map_err(|_| {
        std::io::Error::other(format!("cannot allocate {len} bytes to read it into"))
    })?;
    words.resize(len.div_ceil(8), 0);
    // SAFETY: the Vec owns `8 * words.len() >= len` initialised bytes, borrowed mutably here for the
    // length of the read; u8 has no alignment or validity requirements, and any bytes are valid u64s.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
    // A file that shrank since its length was taken fails here; one that grew is read as it was.
    file.read_exact(bytes)?;
    Ok(PlanBytes::Owned(words, len))
}

/// A node's input views, on the stack for the ops of a transformer (at most six inputs).
type NodeViews<'a> = smallvec::SmallVec<[Option<TensorView<'a>>; 6]>;

/// Where a value comes from when a node reads it.
#[derive(Clone, Debug)]
enum Source {
    /// Computed at run time (a model input or a node output).
    Runtime,
    /// Bytes in the weights section, read in place through a view built once at load (building a
    /// dynamic-rank view costs about 50 ns, on every read of a constant otherwise). The view borrows
    /// the model's `bytes`; see [`mapped_view`].
    Mapped(TensorView<'static>),
    /// Decoded at load: bool constants, whose bytes must be checked to be 0 or 1, and weight panels
    /// repacked to another width ([`crate::panel_width`]).
    Decoded(Tensor),
}

impl Source {
    /// The view of a constant; `None` for a value computed at run time. A mapped view is
    /// reborrowed: the view handed out lives no longer than the model, which owns the bytes.
    fn constant(&self) -> Option<TensorView<'_>> {
        match self {
            Source::Runtime => None,
            Source::Mapped(t) => Some(t.reborrow()),
            Source::Decoded(t) => Some(t.view()),
        }
    }
}

/// A callback [`Model::run_observed`] shows every node with its inputs, just before the node runs.
pub type Observer<'a> = dyn FnMut(&PlanNode, &[Option<TensorView>]) + Send + 'a;

/// A run's outputs, named, in the plan's order.
pub type Outputs = Vec<(String, Tensor)>;

/// The most threads a model runs on ([`Options::threads`], `fffrun --threads`). More than any machine
/// has hardware threads today (two-socket servers reach 384 to 512), so it never stops a useful
/// setting, and a fixed number rather than a multiple of this machine's cores, so that a setting valid
/// on one machine is valid on every other. Past the cores, threads only share them: the limit stops a
/// mistyped count from creating threads until the system runs out.
pub const MAX_THREADS: usize = 1024;

/// How a model runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Threads the kernels use, at most [`MAX_THREADS`]; 0 means one per core. With more than one, a
    /// model still runs calls that its pool does not speed up on the caller's thread alone (see
    /// [`crate::pool_choice`]).
    pub threads: usize,
    /// Columns per weight panel the dense products read; 0 means the width this CPU's GEMM reads best
    /// ([`fff_ops::panels::best_cols`]). Plans store 64; other widths (divisors of 64) are repacked
    /// at load ([`crate::panel_width`]).
    pub panel_cols: usize,
    /// Bytes of values one call may hold at once (its owned inputs and the values its nodes compute,
    /// until they are freed); a call that would pass it fails with [`Error::TooLarge`] naming the node
    /// and the size, before allocating where the size can be known first. 0 means the memory this
    /// process can take when the model loads ([`crate::budget::available_memory`]). Counted by the
    /// runtime, so it holds whatever the allocator (see [`crate::budget`]).
    pub max_memory: usize,
    /// Whether [`Model::load_with`] maps the plan file into memory (the default: loading costs no copy,
    /// and the weights' pages are shared with other processes and read only as they are used) or
    /// reads it whole into memory, which makes the model immune to later changes of the file. See
    /// [`Model::load_with`] for what a mapped plan asks of its file.
    pub mmap: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            threads: 0,
            panel_cols: 0,
            max_memory: 0,
            mmap: true,
        }
    }
}

impl Options {
    /// Refuses options no model can run with, before anything is loaded or started.
    fn check(&self) -> Result<()> {
        if self.threads > MAX_THREADS {
            return Err(Error::invalid(format!(
                "{} threads asked for; a model runs on at most {MAX_THREADS}",
                self.threads
            )));
        }
        Ok(())
    }
}

pub struct Model {
    graph: PlanGraph,
    /// Where each value comes from; the mapped constants' views borrow `bytes` (declared after, so
    /// dropped after).
    sources: Vec<Source>,
    /// The plan, never changed after load; read through the views in `sources`.
    #[allow(dead_code)]
    bytes: PlanBytes,
    /// For each node, the values whose last reader it is (freed right after it runs).
    frees: Vec<Vec<usize>>,
    /// For each node, the inputs it may take over and compute into (see [`in_place`]).
    handover: Vec<Vec<usize>>,
    /// The threads every run's kernels share; none when there is one thread, and calls run on the
    /// caller's thread instead of being handed to a pool (which costs ~15 µs a call).
    pool: Option<rayon::ThreadPool>,
    /// Which calls run on the caller's thread even when there is a pool, learnt from earlier calls.
    pool_choice: PoolChoice,
    /// Buffers of freed values, for later ops and runs (see [`crate::buffers`]).
    recycler: Arc<Mutex<Recycler>>,
    /// Value slots of finished runs, all empty, for the next runs (one per run in flight at most).
    spare_slots: Mutex<Vec<Vec<Option<Tensor>>>>,
    /// For each value, whether its buffer goes back to the recycler when it is freed.
    recyclable: Vec<bool>,
    /// Bytes of values one call may hold at once ([`Options::max_memory`], resolved at load).
    max_memory: usize,
    /// The plan's tokenizer, parsed on first use (see [`Model::tokenizer`]).
    #[cfg(feature = "text")]
    pub(crate) text_tokenizer:
        std::sync::OnceLock<std::result::Result<crate::text::TextTokenizer, String>>,
}

impl Model {
    /// Loads a plan file, memory-mapping its weights, to run on one thread per core. See
    /// [`Model::load_with`] for what a mapped plan asks of its file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(path, Options::default())
    }

    /// Loads a plan file with the given options.
    ///
    /// By default ([`Options::mmap`]) the file is memory-mapped and its weights are read in place, for
    /// as long as the model lives. Plans are immutable once written: fff's own tools write them
    /// atomically (a temporary file renamed over the target), so replacing a plan never changes
    /// what a loaded model sees. Truncating or rewriting a mapped plan file in place is undefined:
    /// the process may be killed (`SIGBUS`) or compute with the new bytes. Where files may change
    /// under a running program, load with `mmap: false`, which reads the plan into memory.
    pub fn load_with(path: impl AsRef<Path>, options: Options) -> Result<Model> {
        options.check()?;
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        if !options.mmap {
            let bytes = read_aligned(file)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            return Model::from_plan_bytes(bytes, options);
        }
        // SAFETY: the map is read-only and private to this process; like every memory-mapped loader we
        // rely on the file not being truncated or rewritten while the model is alive (the contract
        // stated above; `Options::mmap` opts out).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        Model::from_plan_bytes(PlanBytes::Mapped(map), options)
    }

    /// Loads a plan from bytes in memory (copied once into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Model::from_bytes_with(bytes, Options::default())
    }

    /// Loads a plan from bytes in memory with the given options ([`Options::mmap`] does not apply).
    pub fn from_bytes_with(bytes: &[u8], options: Options) -> Result<Model> {
        options.check()?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        Model::from_plan_bytes(PlanBytes::Owned(words, bytes.len()), options)
    }

    /// The model of a plan's bytes; like a run, loading returns an error rather than unwinding.
    fn from_plan_bytes(bytes: PlanBytes, options: Options) -> Result<Model> {
        crate::error::contain_panic(|| Model::build(bytes, options))
    }

    fn build(bytes: PlanBytes, options: Options) -> Result<Model> {
        if cfg!(target_endian = "big") {
            return Err(Error::plan(
                "plans are little-endian; this machine is big-endian",
            ));
        }
        let data = bytes.as_slice();
        let sections = plan::format::decode(data)?;
        let graph = sections.graph;
        plan::validate::validate(&graph, sections.weights.len())?;
        let mut sources = vec![Source::Runtime; graph.num_values];
        for c in &graph.constants {
            let start = sections.weights.start + c.offset;
            let range = start..start + c.len;
            sources[c.value] = if c.dtype == DType::Bool {
                Source::Decoded(Tensor::from_le_bytes(c.dtype, &c.shape, &data[range])?)
            } else {
                Source::Mapped(mapped_view(&bytes, c.dtype, &c.shape, range))
            };
        }
        let cols = crate::panel_width::resolve(options.panel_cols)?;
        let constant = |v: usize| sources[v].constant();
        let release = |v: usize| {
            if let Some(c) = graph.constants.iter().find(|c| c.value == v) {
                let start = sections.weights.start + c.offset;
                bytes.release(start..start + c.len);
            }
        };
        for (v, t) in crate::panel_width::repacked(&graph, constant, cols, release) {
            sources[v] = Source::Decoded(t);
        }
        let frees = free_schedule(&graph);
        let handover = handover_schedule(&graph, &frees, &sources);
        let recyclable = recyclable_values(&graph);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads)
            .thread_name(|i| format!("fff-worker-{i}"))
            .build()
            .map_err(|e| {
                Error::invalid(format!("cannot start {} threads: {e}", options.threads))
            })?;
        let pool = (pool.current_num_threads() > 1).then_some(pool);
        // After the pool's threads exist, so that their stacks count against an address-space limit.
        let max_memory = crate::budget::resolve(options.max_memory);
        Ok(Model {
            graph,
            bytes,
            sources,
            frees,
            recyclable,
            handover,
            pool,
            pool_choice: PoolChoice::default(),
            recycler: Arc::default(),
            spare_slots: Mutex::default(),
            max_memory,
            #[cfg(feature = "text")]
            text_tokenizer: std::sync::OnceLock::new(),
        })
    }

    /// Bytes of values one call may hold at once: [`Options::max_memory`], or the default it
    /// stood for.
    pub fn max_memory(&self) -> usize {
        self.max_memory
    }

    /// The number of threads the kernels use.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(1, rayon::ThreadPool::current_num_threads)
    }

    /// Runs a call `f` on `elements` input elements with the model's threads: on its pool, or serially
    /// on this thread when the model has one thread or the pool does not speed such calls up (see
    /// [`crate::pool_choice`]).
    fn on_threads<T: Send>(
        &self,
        elements: usize,
        f: impl FnOnce() -> Result<T> + Send,
    ) -> Result<T> {
        // The backstop: a panic anywhere in the call (op evaluations already contain their own and
        // name the node) comes back as an error, and the model stays usable.
        let f = || crate::error::contain_panic(|| with_recycler(&self.recycler, f));
        let Some(pool) = &self.pool else {
            return fff_ops::threads::serial(f);
        };
        let serial = self.pool_choice.serial(elements);
        let start = Instant::now();
        let result = if serial {
            fff_ops::threads::serial(f)
        } else {
            pool.install(|| {
                let _warm = crate::keep_warm::Warm::start();
                f()
            })
        };
        // Failed calls (bad inputs, say) end early and say nothing about the work of a call.
        if result.is_ok() {
            self.pool_choice.record(elements, serial, start.elapsed());
        }
        result
    }

    /// The plan's graph: inputs, outputs, nodes.
    pub fn graph(&self) -> &PlanGraph {
        &self.graph
    }

    /// The constant `value` as the model's ops read it (weight panels at the width they were
    /// repacked to); `None` for values computed at run time.
    pub fn constant(&self, value: usize) -> Option<TensorView<'_>> {
        self.sources.get(value)?.constant()
    }

    pub fn inputs(&self) -> &[PlanInput] {
        &self.graph.inputs
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.graph.outputs.iter().map(|o| o.name.as_str()).collect()
    }

    /// Runs the model. Inputs are given by name; outputs come back in the plan's order.
    pub fn run(
        &self,
        inputs: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>> {
        // The kernels' parallel loops run on this model's pool, sized by `Options::threads`.
        self.run_on_threads(RunInputs::Owned(inputs.into_iter().collect()), None, None)
    }

    /// Runs the model on inputs it only borrows, as [`Model::run`] does otherwise: nothing is copied,
    /// so a caller that keeps its inputs (a serving loop, a binding over another language's arrays,
    /// a benchmark) runs them as often as it likes. An op that could have computed into an owned
    /// input's buffer writes a new one instead.
    pub fn run_borrowed(&self, inputs: &[(&str, TensorView<'_>)]) -> Result<Outputs> {
        self.run_on_threads(RunInputs::Borrowed(inputs), None, None)
    }

    fn run_on_threads(
        &self,
        inputs: RunInputs<'_, '_>,
        profile: Option<&mut [Duration]>,
        observe: Option<&mut Observer>,
    ) -> Result<Outputs> {
        self.on_threads(inputs.elements(), || {
            self.run_inner(inputs, profile, observe)
        })
    }

    /// Hands back outputs of an earlier run that the caller is done with, so that the next run writes
    /// into their memory instead of allocating (and page-faulting) new buffers. Optional: outputs that
    /// are simply dropped are freed as usual.
    pub fn recycle(&self, outputs: impl IntoIterator<Item = (String, Tensor)>) {
        for (name, t) in outputs {
            let made_here = self
                .graph
                .outputs
                .iter()
                .any(|o| o.name == name && self.recyclable[o.value]);
            if made_here {
                recycle_into(&self.recycler, t);
            }
        }
    }

    /// Runs the model like [`Model::run_borrowed`] and also times every node: `profile[i]` is the wall
    /// time of node `i` (in the order of [`PlanGraph::nodes`]).
    pub fn run_profiled(
        &self,
        inputs: &[(&str, TensorView<'_>)],
    ) -> Result<(Outputs, Vec<Duration>)> {
        let mut profile = vec![Duration::ZERO; self.graph.nodes.len()];
        let inputs = RunInputs::Borrowed(inputs);
        let outputs = self.run_on_threads(inputs, Some(&mut profile), None)?;
        Ok((outputs, profile))
    }

    /// Runs the model like [`Model::run`], showing `observe` every node with its inputs just before the
    /// node runs: the hook for statistics over intermediate values (as `fffrun --fff-stats` gathers
    /// for FastFeedForward nodes).
    pub fn run_observed(
        &self,
        inputs: impl IntoIterator<Item = (String, Tensor)>,
        observe: &mut Observer,
    ) -> Result<Outputs> {
        let inputs = RunInputs::Owned(inputs.into_iter().collect());
        self.run_on_threads(inputs, None, Some(observe))
    }

    fn run_inner(
        &self,
        inputs: RunInputs<'_, '_>,
        mut profile: Option<&mut [Duration]>,
        mut observe: Option<&mut Observer>,
    ) -> Result<Vec<(String, Tensor)>> {
        let spare = self
            .spare_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut slots = spare.unwrap_or_else(|| vec![None; self.graph.num_values]);
        // On bad inputs the slots, holding those bound so far, are dropped (the next run makes new).
        let borrowed = inputs::bind(&self.graph.inputs, inputs, &mut slots)?;
        let budget = crate::budget::Scope::enter(self.max_memory);
        // Bytes of the values in `slots`: owned inputs, then what the nodes compute.
        let mut held: usize = self
            .graph
            .inputs
            .iter()
            .filter_map(|i| slots[i.value].as_ref())
            .map(bytes_of)
            .sum();
        for (i, (node, frees)) in self.graph.nodes.iter().zip(&self.frees).enumerate() {
            if let Some(observe) = observe.as_deref_mut() {
                let views = self.node_views(node, &slots, &borrowed)?;
                observe(node, &views);
            }
            crate::keep_warm::rearm();
            let start = profile.is_some().then(Instant::now);
            budget.hold(held);
            let reused =
                self.try_in_place(node, &self.handover[i], &mut slots, &borrowed, &mut held)?;
            let outs = if let Some(t) = reused {
                smallvec::smallvec![t]
            } else {
                let views = self.node_views(node, &slots, &borrowed)?;
                eval(&node.op, &views, node.outputs.len()).map_err(|e| Error::Node {
                    node: node.name.clone(),
                    op: node.op.name(),
                    cause: Box::new(e),
                })?
            };
            if outs.len() != node.outputs.len() {
                return Err(Error::Node {
                    node: node.name.clone(),
                    op: node.op.name(),
                    cause: Box::new(Error::invalid(format!(
                        "produced {} outputs, the plan lists {}",
                        outs.len(),
                        node.outputs.len()
                    ))),
                });
            }
            for (&v, t) in node.outputs.iter().zip(outs) {
                held += bytes_of(&t);
                slots[v] = Some(t);
            }
            // Ops whose outputs may outgrow their inputs checked before allocating; this catches the
            // rest (copies, slices, reductions), each no larger than an input.
            budget
                .check_held(held, "its outputs")
                .map_err(|e| Error::Node {
                    node: node.name.clone(),
                    op: node.op.name(),
                    cause: Box::new(e),
                })?;
            for &v in frees {
                if let Some(t) = slots[v].take() {
                    held = held.saturating_sub(bytes_of(&t));
                    if self.recyclable[v] {
                        recycle_into(&self.recycler, t);
                    }
                }
            }
            if let (Some(profile), Some(start)) = (profile.as_deref_mut(), start) {
                profile[i] = start.elapsed();
            }
        }
        // Computed outputs are moved out (the last output naming a value takes it); constants and
        // values named by several outputs are copied.
        let mut outputs = Vec::with_capacity(self.graph.outputs.len());
        for (i, o) in self.graph.outputs.iter().enumerate() {
            let named_again = self.graph.outputs[i + 1..]
                .iter()
                .any(|later| later.value == o.value);
            let t = match slots[o.value].take() {
                Some(t) if named_again => {
                    let copy = t.clone();
                    slots[o.value] = Some(t);
                    copy
                }
                Some(t) => t,
                None => self.value_view(o.value, &slots, &borrowed)?.to_owned(),
            };
            outputs.push((o.name.clone(), t));
        }
        // Values that no node read and no output named are dropped here, as they would be with
        // the slots; the emptied slots serve the next run.
        slots.iter_mut().for_each(|s| *s = None);
        self.spare_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slots);
        Ok(outputs)
    }

    /// Runs `node` in the buffer of one of its `candidates` inputs if it can; `None` if none fits (the
    /// inputs are then left as they were). The input taken over leaves the bytes `held` (its buffer
    /// comes back counted as the output).
    fn try_in_place(
        &self,
        node: &PlanNode,
        candidates: &[usize],
        slots: &mut [Option<Tensor>],
        borrowed: &[(usize, TensorView)],
        held: &mut usize,
    ) -> Result<Option<Tensor>> {
        for &index in candidates {
            let v = node.inputs[index].expect("handover inputs are present");
            let Some(owned) = slots[v].take() else {
                continue;
            };
            let owned_bytes = bytes_of(&owned);
            let result = {
                let views: NodeViews = node
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(j, i)| match i {
                        Some(w) if j != index => self.value_view(*w, slots, borrowed).map(Some),
                        _ => Ok(None),
                    })
                    .collect::<Result<_>>()?;
                in_place::eval(&node.op, index, owned, &views)
            }
            .map_err(|e| Error::Node {
                node: node.name.clone(),
                op: node.op.name(),
                cause: Box::new(e),
            })?;
            match result {
                InPlace::Done(t) => {
                    *held = held.saturating_sub(owned_bytes);
                    return Ok(Some(t));
                }
                InPlace::Declined(t) => slots[v] = Some(t),
            }
        }
        Ok(None)
    }

    /// Views of a node's inputs (`None` for absent optional inputs): this runs for every node of every
    /// call.
    fn node_views<'a>(
        &'a self,
        node: &PlanNode,
        slots: &'a [Option<Tensor>],
        borrowed: &'a [(usize, TensorView)],
    ) -> Result<NodeViews<'a>> {
        let mut views = NodeViews::new();
        for i in &node.inputs {
            views.push(i.map(|v| self.value_view(v, slots, borrowed)).transpose()?);
        }
        Ok(views)
    }

    /// The view of value `v`: a constant, a value the run holds, or an input it borrows.
    fn value_view<'a>(
        &'a self,
        v: usize,
        slots: &'a [Option<Tensor>],
        borrowed: &'a [(usize, TensorView)],
    ) -> Result<TensorView<'a>> {
        if let Some(t) = self.sources[v].constant() {
            return Ok(t);
        }
        if let Some(t) = &slots[v] {
            return Ok(t.view());
        }
        borrowed
            .iter()
            .find(|(b, _)| *b == v)
            .map(|(_, t)| t.reborrow())
            .ok_or_else(|| Error::invalid(format!("value {v} was read after it was freed")))
    }
}

/// The bytes a tensor's elements take.
fn bytes_of(t: &Tensor) -> usize {
    t.len() * t.dtype().size()
}

/// A view of a constant's bytes in the weights section, for the life of the model that owns `bytes`.
///
/// The `'static` lifetime stands for that of the model: the bytes are a read-only map or a heap buffer
/// the model owns and never changes, so they stay where they are when the model moves, and they are
/// dropped only with it. The view is stored only in the model's `sources`, and handed out only
/// reborrowed for as long as the model is borrowed ([`TensorView::reborrow`]).
fn mapped_view(
    bytes: &PlanBytes,
    dtype: DType,
    shape: &[usize],
    range: Range<usize>,
) -> TensorView<'static> {
    let raw = &bytes.as_slice()[range];
    let n = raw.len() / dtype.size();
    macro_rules! view {
        ($t:ty, $variant:ident) => {{
            assert_eq!(raw.as_ptr().align_offset(std::mem::align_of::<$t>()), 0, "weights are aligned");
            // SAFETY: validate() checked that the range lies in the weights section and holds exactly
            // `n` elements; the section starts at a multiple of 64 from a page-aligned map or an
            // 8-byte-aligned buffer, and each constant's offset is a multiple of its element size
            // (asserted above); every bit pattern is a valid f32/i64/i32/bf16/i8/u8. The bytes outlive every
            // use of the view, as the function's comment says.
            let s: &'static [$t] = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<$t>(), n) };
            TensorView::$variant(ArrayViewD::from_shape(IxDyn(shape), s).expect("validated size"))
        }};
    }
    match dtype {
        DType::F32 => view!(f32, F32),
        DType::I64 => view!(i64, I64),
        DType::I32 => view!(i32, I32),
        DType::BF16 => view!(Bf16, BF16),
        DType::I8 => view!(i8, I8),
        DType::U8 => view!(u8, U8),
        DType::Bool => unreachable!("bool constants are decoded at load"),
    }
}

/// For each node, the runtime values it is the last reader of, excluding graph outputs.
/// Values made by ops that take their output buffer from the recycler (see [`crate::buffers`]).
fn recyclable_values(graph: &PlanGraph) -> Vec<bool> {
    let mut recyclable = vec![false; graph.num_values];
    for node in &graph.nodes {
        if node.op.takes_buffers() {
            for &v in &node.outputs {
                recyclable[v] = true;
            }
        }
    }
    recyclable
}

fn free_schedule(g: &PlanGraph) -> Vec<Vec<usize>> {
    let mut last = vec![None; g.num_values];
    for (i, node) in g.nodes.iter().enumerate() {
        for &v in node.inputs.iter().flatten() {
            last[v] = Some(i);
        }
    }
    for o in &g.outputs {
        last[o.value] = None;
    }
    let mut frees = vec![Vec::new(); g.nodes.len()];
    for (v, l) in last.into_iter().enumerate() {
        if let Some(i) = l {
            frees[i].push(v);
        }
    }
    frees
}

/// For each node, the inputs it may compute into: computed values whose last reader it is, read once
/// by it, at an input position its op can reuse.
fn handover_schedule(g: &PlanGraph, frees: &[Vec<usize>], sources: &[Source]) -> Vec<Vec<usize>> {
    g.nodes
        .iter()
        .zip(frees)
        .map(|(node, frees)| {
            if node.outputs.len() != 1 {
                return Vec::new();
            }
            in_place::candidates(&node.op)
                .iter()
                .copied()
                .filter(|&index| match node.inputs.get(index).copied().flatten() {
                    Some(v) => {
                        matches!(sources[v], Source::Runtime)
                            && frees.contains(&v)
                            && node.inputs.iter().filter(|i| **i == Some(v)).count() == 1
                    }
                    None => false,
                })
                .collect()
        })
        .collect()
}

/// `[batch, seq, 64]`.
pub fn shape_text(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Model>();
    }
}
