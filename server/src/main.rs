//! fffserve: serves every plan of a model repository over the Open Inference Protocol v2 REST API,
//! with dynamic batching, backpressure and Prometheus metrics. See server/README.md.

mod batcher;
mod http;
mod metrics;
mod repo;
mod v2;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::batcher::BatchConfig;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::repo::Repo;

/// Serves fff plans over the Open Inference Protocol v2 (KServe / Triton REST API).
#[derive(Parser, Debug)]
#[command(name = "fffserve", version)]
struct Cli {
    /// Folder of plans: each DIR/NAME.fff is served as model NAME, version "1".
    #[arg(long, value_name = "DIR")]
    model_repository: PathBuf,
    /// Port to listen on; 0 picks a free one (the line `fffserve listening on ...` tells which).
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Threads each model's kernels use; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Most rows a dynamic batch stacks; 1 runs every request alone.
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
    /// How long a batch waits for more requests after its first, in milliseconds.
    #[arg(long, default_value_t = 2)]
    max_queue_delay_ms: u64,
    /// Requests each model queues; past that, requests are refused at once with 503.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body (bytes; K, M and G suffixes are powers of 1024); larger ones get 413.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    max_request_bytes: usize,
    /// A request not answered within this many milliseconds gets 504.
    #[arg(long, default_value_t = 30000)]
    request_timeout_ms: u64,
    /// Look for new, changed and removed plans every S seconds; 0 never does.
    #[arg(long, default_value_t = 0, value_name = "S")]
    poll_repository_s: u64,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (bytes, or a number with K, M or G)"))?;
    let scale: usize = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (K, M or G)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.max_batch_size == 0 {
        bail!("--max-batch-size must be at least 1");
    }
    if !cli.model_repository.is_dir() {
        bail!(
            "--model-repository {} is not a folder",
            cli.model_repository.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fffserve-io")
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let batch = BatchConfig {
        max_batch: cli.max_batch_size,
        delay: Duration::from_millis(cli.max_queue_delay_ms),
        max_queue: cli.max_queue,
    };
    let repo = Arc::new(Repo::new(
        cli.model_repository.clone(),
        cli.threads,
        cli.poll_repository_s > 0,
        batch,
        metrics.clone(),
    ));
    repo.scan()
        .await
        .with_context(|| format!("cannot read {}", cli.model_repository.display()))?;
    if repo.names().is_empty() {
        eprintln!(
            "fffserve: no model loaded from {} (it serves every NAME.fff in it)",
            cli.model_repository.display()
        );
    }
    let poller = (cli.poll_repository_s > 0).then(|| {
        tokio::spawn(
            repo.clone()
                .poll(Duration::from_secs(cli.poll_repository_s)),
        )
    });
    let state = Arc::new(AppState {
        repo: repo.clone(),
        metrics,
        request_timeout: Duration::from_millis(cli.request_timeout_ms),
    });
    let app = http::router(state, cli.max_request_bytes);
    let listener = tokio::net::TcpListener::bind((cli.host.as_str(), cli.http_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cli.host, cli.http_port))?;
    let addr = listener.local_addr()?;
    eprintln!("fffserve listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed")?;
    if let Some(p) = poller {
        p.abort();
    }
    eprintln!("fffserve: stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C: the server stops accepting and finishes the requests in flight.
/// Should they take too long, the process leaves anyway 9 s later.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("fffserve: shutting down: finishing the requests in flight");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(9));
        eprintln!("fffserve: requests still in flight after 9 s; exiting");
        std::process::exit(0);
    });
}
