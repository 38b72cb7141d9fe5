//! The model repository: every `DIR/NAME.fff` served as model `NAME`, version "1", and, when
//! polled, reloaded when its file changes (new or changed mtime or size) and unloaded when removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fff_runtime::model::{Model, Options};

use crate::batcher::{BatchConfig, Served};
use crate::metrics::Metrics;

/// What a plan file looked like when it was loaded: a change of either means a new plan.
type Stamp = (Option<SystemTime>, u64);

pub struct Repo {
    dir: PathBuf,
    threads: usize,
    /// Read plans into memory instead of mapping them (when polling: a replaced file then never
    /// changes a loaded model).
    read_whole: bool,
    batch: BatchConfig,
    metrics: Arc<Metrics>,
    models: RwLock<HashMap<String, Arc<Served>>>,
    /// Plans that did not load, with why: the server is not ready while there are any.
    failed: RwLock<HashMap<String, String>>,
    stamps: RwLock<HashMap<String, Stamp>>,
}

impl Repo {
    pub fn new(
        dir: PathBuf,
        threads: usize,
        read_whole: bool,
        batch: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Repo {
        Repo {
            dir,
            threads,
            read_whole,
            batch,
            metrics,
            models: RwLock::default(),
            failed: RwLock::default(),
            stamps: RwLock::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.models.read().unwrap().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.models.read().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether every plan in the repository is loaded.
    pub fn ready(&self) -> bool {
        self.failed.read().unwrap().is_empty()
    }

    fn plans(&self) -> std::io::Result<Vec<(String, PathBuf, Stamp)>> {
        let mut plans = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("fff") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            plans.push((name.to_string(), path, (meta.modified().ok(), meta.len())));
        }
        plans.sort();
        Ok(plans)
    }

    fn load(&self, path: &Path) -> Result<Model, String> {
        let options = Options {
            threads: self.threads,
            mmap: !self.read_whole,
            ..Options::default()
        };
        Model::load_with(path, options).map_err(|e| e.to_string())
    }

    fn install(&self, name: &str, model: Model) {
        let served = Served::start(
            name.to_string(),
            model,
            self.batch,
            self.metrics.for_model(name),
        );
        self.failed.write().unwrap().remove(name);
        self.models
            .write()
            .unwrap()
            .insert(name.to_string(), Arc::new(served));
    }

    /// Loads what is new or changed and unloads what is gone. Loading runs on a blocking thread; the
    /// model is swapped in only once it has loaded, so requests meanwhile go to the old one.
    pub async fn scan(self: &Arc<Self>) -> std::io::Result<()> {
        let plans = self.plans()?;
        for (name, path, stamp) in &plans {
            if self.stamps.read().unwrap().get(name) == Some(stamp) {
                continue;
            }
            let repo = self.clone();
            let p = path.clone();
            let loaded = tokio::task::spawn_blocking(move || repo.load(&p))
                .await
                .unwrap_or_else(|e| Err(format!("loading failed: {e}")));
            self.stamps.write().unwrap().insert(name.clone(), *stamp);
            match loaded {
                Ok(model) => {
                    eprintln!("fffserve: loaded model '{name}' from {}", path.display());
                    self.install(name, model);
                }
                Err(e) => {
                    eprintln!("fffserve: cannot load {}: {e}", path.display());
                    self.failed.write().unwrap().insert(name.clone(), e);
                }
            }
        }
        let present: Vec<&String> = plans.iter().map(|(n, ..)| n).collect();
        let gone: Vec<String> = self
            .stamps
            .read()
            .unwrap()
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for name in gone {
            eprintln!("fffserve: unloaded model '{name}' (its plan was removed)");
            self.stamps.write().unwrap().remove(&name);
            self.failed.write().unwrap().remove(&name);
            self.models.write().unwrap().remove(&name);
        }
        Ok(())
    }

    /// Scans the repository every `every` until the task is dropped.
    pub async fn poll(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(e) = self.scan().await {
                eprintln!("fffserve: cannot read {}: {e}", self.dir.display());
            }
        }
    }
}
