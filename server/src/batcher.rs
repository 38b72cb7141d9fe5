//! One model as served: its queue and the batcher task that drains it.
//!
//! Requests whose inputs agree on every dimension but the first (the batch axis) are concatenated
//! along axis 0, up to `max_batch_size` rows. A batch takes the requests already queued; under
//! concurrent load (the last batch stacked several requests, or this one's first was queued while
//! the last ran) it also waits up to `max_queue_delay` after its first for more, while a lone request runs
//! at once. The batch runs once on a blocking thread (the model's own pool does the kernels) and its
//! outputs are split back by rows. A batch that fails is run again request by request, so that one bad request
//! fails alone. Models whose outputs do not all share the inputs' batch symbol at axis 0 run every
//! request alone. Texts are batched when the model masks padding and the request pools.

use std::sync::Arc;
use std::time::Duration;

use fff_runtime::model::{Model, Outputs};
use fff_runtime::ndarray::{concatenate, Axis, Slice};
use fff_runtime::plan::Dim;
use fff_runtime::text::{EmbedOptions, Pooling};
use fff_runtime::{DType, Error, Tensor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::ModelMetrics;
use tokio::sync::{mpsc, oneshot};

/// What a request asks for.
#[derive(Clone)]
pub enum Work {
    Tensors(Vec<(String, Tensor)>),
    Texts {
        texts: Vec<String>,
        pooling: Option<Pooling>,
        normalize: Option<bool>,
    },
}

/// Why a run failed: the request's fault (400) or the server's (500).
#[derive(Debug)]
pub enum RunError {
    Client(String),
    Server(String),
}

pub type Reply = Result<Outputs, RunError>;

struct Job {
    work: Work,
    reply: oneshot::Sender<Reply>,
    queued: std::time::Instant,
}

#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub delay: Duration,
    pub max_queue: usize,
}

/// A loaded model with its queue. Dropping the last handle closes the queue; the batcher then
/// finishes what is queued and ends.
pub struct Served {
    pub name: String,
    pub model: Arc<Model>,
    /// Whether requests are batched together (see [`batch_axis`]).
    pub batchable: bool,
    tx: mpsc::Sender<Job>,
    queue: Gauge,
}

/// The queue is full: the request is refused at once.
pub struct QueueFull;

impl Served {
    /// Starts the model's batcher on the current tokio runtime.
    pub fn start(name: String, model: Model, config: BatchConfig, metrics: ModelMetrics) -> Served {
        let queue = metrics.queue_depth.clone();
        let model = Arc::new(model);
        let batching = if config.max_batch > 1 {
            batch_axis(&model)
        } else {
            Batching::Never
        };
        let batchable = batching != Batching::Never;
        let (tx, rx) = mpsc::channel(config.max_queue.max(1));
        tokio::spawn(batcher(model.clone(), rx, config, batching, metrics));
        Served {
            name,
            model,
            batchable,
            tx,
            queue,
        }
    }

    /// Queues `work`; the receiver gets the outputs (in the plan's order; for texts, `embedding`).
    pub fn submit(&self, work: Work) -> Result<oneshot::Receiver<Reply>, QueueFull> {
        let (reply, rx) = oneshot::channel();
        // Counted before sending so that the batcher's decrement never comes first.
        self.queue.inc();
        let queued = std::time::Instant::now();
        match self.tx.try_send(Job {
            work,
            reply,
            queued,
        }) {
            Ok(()) => Ok(rx),
            Err(_) => {
                self.queue.dec();
                Err(QueueFull)
            }
        }
    }
}

/// Whether a model's requests are stacked along axis 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Every request runs alone.
    Never,
    /// Every input and every output has the same named size at axis 0.
    Yes,
    /// The inputs share a named size at axis 0 but the plan does not tell some outputs' first
    /// size (`?`): the first batch also runs its requests alone and compares; batching goes on only
    /// if the stacked outputs are the requests' own, row for row.
    Unverified,
}

/// How a model's requests may be batched (see [`Batching`]).
pub fn batch_axis(model: &Model) -> Batching {
    let graph = model.graph();
    let Some(Some(Dim::Sym(symbol))) = graph.inputs.first().map(|i| i.shape.first()) else {
        return Batching::Never;
    };
    if symbol == "?" || graph.outputs.is_empty() {
        return Batching::Never;
    }
    let first = |shape: Option<&[Dim]>| shape.and_then(|s| s.first()).cloned();
    if !graph
        .inputs
        .iter()
        .all(|i| first(Some(&i.shape)) == Some(Dim::Sym(symbol.clone())))
    {
        return Batching::Never;
    }
    let mut unknown = false;
    for o in &graph.outputs {
        match first(o.shape.as_deref()) {
            Some(Dim::Sym(s)) if s == *symbol => {}
            // Rank unknown or first size unknown: to be checked on the first batch.
            None => unknown = true,
            Some(Dim::Sym(s)) if s == "?" => unknown = true,
            Some(_) => return Batching::Never,
        }
    }
    if unknown {
        Batching::Unverified
    } else {
        Batching::Yes
    }
}

/// What the requests of one batch share.
#[derive(PartialEq)]
enum BatchKey {
    /// Each input's element type and sizes after the first.
    Tensors(Vec<(DType, Vec<usize>)>),
    /// The pooling and normalisation asked for.
    Texts(Option<Pooling>, Option<bool>),
}

/// Rows of a request, and what every request in its batch must share. Texts are batched only when
/// the model masks padding (so that a text's vector does not depend on its batch's longest) and
/// pools (so that every text gives one row).
fn batch_key(model: &Model, work: &Work) -> Option<(usize, BatchKey)> {
    let inputs = match work {
        Work::Tensors(inputs) => inputs,
        Work::Texts {
            texts,
            pooling,
            normalize,
        } => {
            let masked = model.text_config()?.roles.mask.is_some();
            let options = EmbedOptions {
                pooling: *pooling,
                ..EmbedOptions::default()
            };
            let pools = model.embed_settings(&options).0 != Pooling::None;
            return (masked && pools && !texts.is_empty())
                .then_some((texts.len(), BatchKey::Texts(*pooling, *normalize)));
        }
    };
    let rows = inputs.first()?.1.shape().first().copied()?;
    if inputs.iter().any(|(_, t)| t.shape().first() != Some(&rows)) {
        return None;
    }
    let key = inputs
        .iter()
        .map(|(_, t)| (t.dtype(), t.shape()[1..].to_vec()))
        .collect();
    Some((rows, BatchKey::Tensors(key)))
}

async fn batcher(
    model: Arc<Model>,
    mut rx: mpsc::Receiver<Job>,
    config: BatchConfig,
    mut batching: Batching,
    metrics: ModelMetrics,
) {
    let queue = metrics.queue_depth.clone();
    let mut carry: Option<Job> = None;
    // Whether requests arrive while batches run: the last batch stacked several requests.
    let mut concurrent = false;
    // When the last batch began to answer: a request queued before then waited for that run, so
    // others are arriving while the model works. (A lone client's next request comes after its
    // answer, even when it reaches the queue before the batcher is back for it.)
    let mut answered = std::time::Instant::now();
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => {
                    queue.dec();
                    job
                }
                None => return,
            },
        };
        let was_queued = first.queued < answered;
        // A request whose client has gone (timed out) is not run.
        if first.reply.is_closed() {
            continue;
        }
        let mut batch = vec![];
        let key = (batching != Batching::Never)
            .then(|| batch_key(&model, &first.work))
            .flatten();
        batch.push(first);
        if let Some((mut rows, key)) = key {
            // A lone request never waits: only under concurrent load is the model left idle for
            // up to the delay while more requests gather.
            let wait = concurrent || was_queued;
            let deadline = tokio::time::Instant::now() + config.delay;
            while rows < config.max_batch {
                let next = if config.delay.is_zero() || !wait {
                    rx.try_recv().ok()
                } else {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                };
                let Some(job) = next else { break };
                queue.dec();
                if job.reply.is_closed() {
                    continue;
                }
                match batch_key(&model, &job.work) {
                    Some((r, k)) if k == key && rows + r <= config.max_batch => {
                        rows += r;
                        batch.push(job);
                    }
                    _ => {
                        carry = Some(job);
                        break;
                    }
                }
            }
        }
        concurrent = batch.len() > 1;
        let model = model.clone();
        let sizes = metrics.batch_size.clone();
        for job in &batch {
            metrics
                .queue_wait
                .observe(job.queued.elapsed().as_secs_f64());
        }
        // The batcher waits for its batch: while it runs, the next requests gather in the queue.
        let done =
            tokio::task::spawn_blocking(move || run_batch(&model, batch, batching, &sizes)).await;
        match done {
            Ok((now, at)) => (batching, answered) = (now, at),
            Err(e) => eprintln!("fffserve: a batch's thread failed: {e}"),
        }
    }
}

fn classify(e: Error) -> RunError {
    match e {
        Error::Plan(_) | Error::Internal(_) | Error::Io { .. } => RunError::Server(e.to_string()),
        _ => RunError::Client(e.to_string()),
    }
}

/// Runs a batch and answers its requests; returns how the model batches from now on, and when the
/// answers began to go out.
fn run_batch(
    model: &Model,
    mut batch: Vec<Job>,
    batching: Batching,
    sizes: &Histogram,
) -> (Batching, std::time::Instant) {
    if batch.len() == 1 {
        let job = batch.pop().expect("one job");
        let reply = run_alone(model, job.work, sizes);
        let at = std::time::Instant::now();
        let _ = job.reply.send(reply);
        return (batching, at);
    }
    let texts = matches!(batch[0].work, Work::Texts { .. });
    let stacked = run_stacked(model, &batch, sizes);
    if batching == Batching::Yes || texts {
        if let Some(parts) = stacked {
            let at = std::time::Instant::now();
            for (job, outputs) in batch.into_iter().zip(parts) {
                let _ = job.reply.send(Ok(outputs));
            }
            return (batching, at);
        }
    }
    // Run one by one: after a failed batch, so that the good requests succeed and the bad one fails
    // alone; on the first batch of an unverified model, to compare.
    let alone: Vec<Reply> = batch
        .iter()
        .map(|job| run_alone(model, job.work.clone(), sizes))
        .collect();
    let mut now = batching;
    if batching == Batching::Unverified && !texts && alone.iter().all(Result::is_ok) {
        let same = stacked.as_ref().is_some_and(|parts| {
            parts
                .iter()
                .zip(&alone)
                .all(|(p, a)| same_outputs(p, a.as_ref().expect("checked ok")))
        });
        now = if same { Batching::Yes } else { Batching::Never };
        eprintln!(
            "fffserve: {} requests stacked {} their own runs: batching is {}",
            batch.len(),
            if same { "match" } else { "do not match" },
            if same { "on" } else { "off for this model" }
        );
    }
    let at = std::time::Instant::now();
    for (job, reply) in batch.into_iter().zip(alone) {
        let _ = job.reply.send(reply);
    }
    (now, at)
}

/// Whether a request's share of a stacked run is its own run's outputs: the same names and shapes,
/// and values within float rounding.
fn same_outputs(a: &Outputs, b: &Outputs) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb
                && ta.shape() == tb.shape()
                && match (ta, tb) {
                    (Tensor::F32(x), Tensor::F32(y)) => x
                        .iter()
                        .zip(y.iter())
                        .all(|(p, q)| (p - q).abs() <= 1e-3 * (1.0 + q.abs()) || p == q),
                    _ => ta == tb,
                }
        })
}

fn rows_of(work: &Work) -> usize {
    match work {
        Work::Tensors(inputs) => inputs
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(1),
        Work::Texts { texts, .. } => texts.len(),
    }
}

fn run_alone(model: &Model, work: Work, sizes: &Histogram) -> Reply {
    sizes.observe(rows_of(&work) as f64);
    match work {
        Work::Tensors(inputs) => model.run(inputs).map_err(classify),
        Work::Texts {
            texts,
            pooling,
            normalize,
        } => {
            let options = EmbedOptions {
                pooling,
                normalize,
                ..EmbedOptions::default()
            };
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens = model.tokenize(&refs, &options).map_err(classify)?;
            let inputs = model.token_inputs(&tokens, &options).map_err(classify)?;
            let outputs = model.run(inputs).map_err(classify)?;
            let vectors = model
                .pool_outputs(&outputs, &tokens, &options)
                .map_err(classify)?;
            Ok(vec![(
                "embedding".to_string(),
                Tensor::F32(vectors.into_dyn()),
            )])
        }
    }
}

/// Runs the batch as one call; `None` when it cannot be stacked or the run fails.
fn run_stacked(model: &Model, batch: &[Job], sizes: &Histogram) -> Option<Vec<Outputs>> {
    if let Work::Texts {
        pooling, normalize, ..
    } = &batch[0].work
    {
        return run_texts_stacked(model, batch, *pooling, *normalize, sizes);
    }
    let inputs: Vec<&Vec<(String, Tensor)>> = batch
        .iter()
        .map(|j| match &j.work {
            Work::Tensors(t) => Some(t),
            Work::Texts { .. } => None,
        })
        .collect::<Option<_>>()?;
    let rows: Vec<usize> = batch.iter().map(|j| rows_of(&j.work)).collect();
    let total: usize = rows.iter().sum();
    let mut stacked = Vec::with_capacity(inputs[0].len());
    for (k, (name, _)) in inputs[0].iter().enumerate() {
        let parts: Vec<&Tensor> = inputs.iter().map(|i| &i[k].1).collect();
        stacked.push((name.clone(), concat(&parts)?));
    }
    let outputs = model.run(stacked).ok()?;
    sizes.observe(total as f64);
    if outputs
        .iter()
        .any(|(_, t)| t.shape().first() != Some(&total))
    {
        return None;
    }
    let mut parts: Vec<Outputs> = vec![Vec::with_capacity(outputs.len()); batch.len()];
    for (name, t) in &outputs {
        let mut at = 0;
        for (part, &r) in parts.iter_mut().zip(&rows) {
            part.push((name.clone(), rows_slice(t, at, at + r)));
            at += r;
        }
    }
    Some(parts)
}

/// Embeds the texts of every request in one call and splits the vectors back.
fn run_texts_stacked(
    model: &Model,
    batch: &[Job],
    pooling: Option<Pooling>,
    normalize: Option<bool>,
    sizes: &Histogram,
) -> Option<Vec<Outputs>> {
    let mut texts = vec![];
    let mut rows = vec![];
    for job in batch {
        let Work::Texts { texts: t, .. } = &job.work else {
            return None;
        };
        rows.push(t.len());
        texts.extend(t.iter().cloned());
    }
    let work = Work::Texts {
        texts,
        pooling,
        normalize,
    };
    let outputs = run_alone(model, work, sizes).ok()?;
    let (name, vectors) = outputs.first()?;
    let mut at = 0;
    let parts = rows
        .iter()
        .map(|&r| {
            let part = vec![(name.clone(), rows_slice(vectors, at, at + r))];
            at += r;
            part
        })
        .collect();
    Some(parts)
}

/// Tensors of one element type stacked along axis 0.
fn concat(parts: &[&Tensor]) -> Option<Tensor> {
    macro_rules! stack {
        ($variant:ident) => {{
            let views = parts
                .iter()
                .map(|t| match t {
                    Tensor::$variant(a) => Some(a.view()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Tensor::$variant(concatenate(Axis(0), &views).ok()?)
        }};
    }
    Some(match parts.first()? {
        Tensor::F32(_) => stack!(F32),
        Tensor::I64(_) => stack!(I64),
        Tensor::I32(_) => stack!(I32),
        Tensor::Bool(_) => stack!(Bool),
        Tensor::BF16(_) => stack!(BF16),
        Tensor::I8(_) => stack!(I8),
        Tensor::U8(_) => stack!(U8),
    })
}

/// Rows `from..to` of a tensor.
fn rows_slice(t: &Tensor, from: usize, to: usize) -> Tensor {
    let s = Slice::from(from..to);
    fff_runtime::map_tensor!(t, Tensor, a => a.slice_axis(Axis(0), s).to_owned())
}
