//! Training end to end: data → network → loss → backward → optimiser, with evaluation, checkpoints,
//! metrics (JSONL), curves (PNG) and resume.
//!
//! [`fit`] runs a [`TrainConfig`]; `vidgrad train` and `examples/train_eco.rs` are thin wrappers.
//! Reproducibility: the loader draws every clip from (seed, epoch, video), the network's dropout masks
//! from (seed, forward count), the schedule is a function of the step and the CPU kernels sum in a fixed
//! order, so on the CPU a run resumed from its last checkpoint continues bit-identically.
//!
//! Data parallelism ([`fit_distributed`], docs/DISTRIBUTED.md): one process per device, each with the
//! whole model and `batch_size` clips per step from its shard of the epoch; parameters and buffers
//! start from rank 0's, gradients are averaged over the ranks during backward, the metrics are reduced,
//! and only rank 0 writes the run folder; with `sync_bn`, batch norm uses every rank's batch.

pub mod args;
pub mod checkpoint;
pub mod metrics;
pub mod plot;
pub mod run_dir;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::data::{ClipSpec, CropMode, Dataset, Loader};
use crate::device::Device;
use crate::dist::{self, Collective, SingleProcess};
use crate::error::{Error, Result};
use crate::exec::Network;
use crate::models::{self, ModelOptions};
use crate::ops;
use crate::optim::{self, AdamW, AdamWConfig, LrSchedule, Optimizer, Sgd, SgdConfig};
use crate::tensor::Tensor;
pub use metrics::Metrics;
use run_dir::{RunDir, Start};

/// Which optimiser, with its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerKind {
    Sgd { momentum: f32, nesterov: bool },
    AdamW,
}

/// How the learning rate moves over the run (per step; epochs converted with the epoch length).
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleKind {
    Constant,
    /// Cosine annealing to 0 over the whole run.
    Cosine,
    /// ×gamma every `every` epochs.
    Step {
        every: usize,
        gamma: f32,
    },
    /// ×gamma at each listed epoch.
    MultiStep {
        epochs: Vec<usize>,
        gamma: f32,
    },
}

/// Builds a model's graph for an input shape: a network that is not in [`models`] (the distributed
/// tests train a model without batch norm, whose result does not depend on how the batch is split).
#[derive(Clone)]
pub struct ModelFn(pub Arc<BuildGraph>);

/// A function from an input shape to a graph.
pub type BuildGraph = dyn Fn(&[usize]) -> Result<crate::graph::Graph> + Send + Sync;

/// Per video: the sum of its views' softmax scores and the number of views.
type VideoScores = Vec<Option<(Vec<f32>, usize)>>;

impl std::fmt::Debug for ModelFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelFn")
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub model: String,
    pub model_opts: ModelOptions,
    /// Training clips (the validation spec is derived: centre frames and crops).
    pub clip: ClipSpec,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub optimizer: OptimizerKind,
    pub weight_decay: f32,
    pub schedule: ScheduleKind,
    /// Linear warm-up from 10 % of the rate over this many epochs (fractions allowed).
    pub warmup_epochs: f32,
    /// Clip the global gradient norm to this.
    pub clip_grad: Option<f32>,
    pub label_smoothing: f32,
    /// Test-time clips per video and crops for validation.
    pub val_clips: usize,
    pub val_crop: CropMode,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    pub device: Device,
    /// Checkpoints, metrics.jsonl, curves.
    pub out_dir: PathBuf,
    /// Continue from `out_dir/last.safetensors` (an error when there is none).
    pub resume: bool,
    /// Replace an earlier run in `out_dir` (without it, or `resume`, an earlier run is an error).
    pub overwrite: bool,
    /// Leave out the last incomplete training batch of each epoch (a batch of one clip cannot be
    /// normalised by train-mode batch norm); validation always sees every video.
    pub drop_last: bool,
    /// The run's settings as command-line flags (stored in the checkpoints so that `--resume` restores
    /// them; see `args::TrainArgs`). Null for runs started from the library.
    pub settings: Value,
    /// Show progress bars (off in tests and when stderr is not a terminal).
    pub progress: bool,
    /// Stop after this many epochs in this invocation (a resumed run continues the schedule); for tests.
    pub stop_after_epochs: Option<usize>,
    /// Fail at the first node whose output or gradient is not finite (`Network::set_check_finite`).
    pub check_finite: bool,
    /// Data parallelism: batch norm in training normalises with the statistics of every rank's batch
    /// together (`--sync-bn`, `dist::sync_bn`); no effect in a world of one.
    pub sync_bn: bool,
    /// Data parallelism: start each gradient bucket's all-reduce during backward, as soon as its
    /// gradients are final (the default; off: after backward, with bit-identical results).
    pub ddp_overlap: bool,
    /// Data parallelism: the most gradient bytes in one all-reduce (PyTorch's `bucket_cap_mb`).
    pub ddp_bucket_bytes: usize,
    /// Build the network with this instead of `models::build(model)` (`model` still names it in the
    /// checkpoints and gives the clip layout). None from the command line.
    pub model_fn: Option<ModelFn>,
}

impl TrainConfig {
    /// Defaults for `model` (layout, normalisation) with everything else conservative.
    pub fn new(model: &str, device: Device, out_dir: impl Into<PathBuf>) -> Result<TrainConfig> {
        let layout = models::native_layout(model)?;
        Ok(TrainConfig {
            model: model.to_string(),
            model_opts: ModelOptions::default(),
            clip: ClipSpec {
                layout,
                norm: models::native_normalization(model)?,
                ..ClipSpec::default()
            },
            epochs: 10,
            batch_size: 8,
            lr: 0.01,
            optimizer: OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            weight_decay: 5e-4,
            schedule: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            clip_grad: None,
            label_smoothing: 0.0,
            val_clips: 1,
            val_crop: CropMode::Center,
            workers: 2,
            prefetch: 4,
            seed: 0,
            device,
            out_dir: out_dir.into(),
            resume: false,
            overwrite: false,
            drop_last: true,
            settings: Value::Null,
            progress: true,
            stop_after_epochs: None,
            check_finite: false,
            sync_bn: false,
            ddp_overlap: true,
            ddp_bucket_bytes: dist::ddp::BUCKET_BYTES,
            model_fn: None,
        })
    }

    /// The validation clip spec: centre frames, `val_clips` clips, `val_crop`.
    pub fn val_clip(&self) -> ClipSpec {
        ClipSpec {
            train: false,
            clips_per_video: self.val_clips,
            crop: self.val_crop,
            flip: false,
            ..self.clip.clone()
        }
    }

    /// The model's input shape for a batch of `batch` clips.
    pub fn input_shape(&self, batch: usize) -> Vec<usize> {
        let mut s = vec![batch];
        s.extend(self.clip.clip_shape());
        s
    }

    fn to_json(&self) -> Value {
        json!({
            "model": self.model,
            "classes": self.model_opts.classes,
            "dropout": self.model_opts.dropout,
            "model_options": self.model_opts.extra,
            "segments": self.clip.segments, "size": self.clip.size, "resize_short": self.clip.resize_short,
            "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
            "optimizer": format!("{:?}", self.optimizer), "weight_decay": self.weight_decay,
            "schedule": format!("{:?}", self.schedule), "warmup_epochs": self.warmup_epochs,
            "clip_grad": self.clip_grad, "label_smoothing": self.label_smoothing, "seed": self.seed,
            "device": self.device.to_string(),
            "math": crate::math_mode::math_mode_on(crate::math_mode::Hardware::of(self.device))
                .unwrap_or_default()
                .name(),
            "sync_bn": self.sync_bn,
        })
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_top1: f64,
    pub last: Option<Metrics>,
    /// Training loss of every step, in order (the resume test compares these).
    pub step_losses: Vec<f32>,
    pub seconds: f64,
    /// Seconds the trainer spent waiting for data.
    pub data_wait_seconds: f64,
    /// The run's files in its folder at the end (checkpoints, metrics, curves), by path.
    pub files: Vec<PathBuf>,
}

fn build_optimizer(cfg: &TrainConfig, net: &Network) -> Result<Box<dyn Optimizer>> {
    let groups = optim::param_groups_no_decay(net.parameters(), cfg.weight_decay);
    Ok(match cfg.optimizer {
        OptimizerKind::Sgd { momentum, nesterov } => Box::new(Sgd::new(
            groups,
            SgdConfig {
                lr: cfg.lr,
                momentum,
                dampening: 0.0,
                nesterov,
            },
        )?),
        OptimizerKind::AdamW => Box::new(AdamW::new(
            groups,
            AdamWConfig {
                lr: cfg.lr,
                ..Default::default()
            },
        )?),
    })
}

fn build_schedule(cfg: &TrainConfig, steps_per_epoch: usize) -> LrSchedule {
    let total = cfg.epochs * steps_per_epoch;
    let warm = (cfg.warmup_epochs * steps_per_epoch as f32).round() as usize;
    let main = match &cfg.schedule {
        ScheduleKind::Constant => LrSchedule::Constant,
        ScheduleKind::Cosine => LrSchedule::cosine(total.saturating_sub(warm).max(1), 0.0),
        ScheduleKind::Step { every, gamma } => LrSchedule::step(every * steps_per_epoch, *gamma),
        ScheduleKind::MultiStep { epochs, gamma } => LrSchedule::multi_step(
            &epochs
                .iter()
                .map(|e| e * steps_per_epoch)
                .collect::<Vec<_>>(),
            *gamma,
        ),
    };
    if warm > 0 {
        main.with_warmup(0.1, warm)
    } else {
        main
    }
}

/// Append one JSON line to `path`.
fn log_json(path: &Path, v: &Value) -> Result<()> {
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{v}").map_err(io)
}

/// Keep the lines of a metrics log that belong to epochs before `epoch` (a resumed run rewrites the rest).
fn truncate_log(path: &Path, epoch: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .is_some_and(|e| (e as usize) < epoch)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    crate::io::write_atomic(path, body.as_bytes())
}

/// Evaluate `net` on `loader`'s epoch 0 (deterministic test clips): per video, the mean of its views'
/// softmax scores. `label_map[k]`: the model's index of the data's class `k` (the identity when the
/// model was trained on this data's classes; see `data::match_class_names`).
pub fn evaluate(
    net: &mut Network,
    loader: &Loader,
    label_map: &[usize],
    progress: bool,
) -> Result<Metrics> {
    evaluate_distributed(net, loader, label_map, progress, &SingleProcess)
}

/// [`evaluate`] with the videos shared among the ranks: each rank runs its part of the (unpadded)
/// split (`loader` sharded with `Loader::shard(rank, world, false)`), then the per-video mean scores
/// are summed over the ranks (each video comes from one rank, the others add exact zeros), so every
/// rank returns the metrics of the whole split.
pub fn evaluate_distributed(
    net: &mut Network,
    loader: &Loader,
    label_map: &[usize],
    progress: bool,
    dist: &dyn Collective,
) -> Result<Metrics> {
    let device = net.device();
    net.eval();
    let ds = loader.dataset().clone();
    if ds.is_empty() {
        return Err(Error::arg("evaluate", "the split holds no videos"));
    }
    if label_map.len() != ds.classes().len() {
        return Err(Error::arg(
            "evaluate",
            format!(
                "a label map of {} classes for data of {}",
                label_map.len(),
                ds.classes().len()
            ),
        ));
    }
    let mut classes = 0;
    let mut sums: VideoScores = vec![None; ds.len()];
    let bar = progress_bar(progress, loader.batches_per_epoch() as u64, "eval");
    for batch in loader.epoch(0) {
        let batch = batch?;
        let x = Tensor::from_vec(batch.data, &batch.shape, device)?;
        let logits = crate::no_grad(|| net.forward(&[&x]))?;
        classes = logits.shape()[logits.shape().len() - 1];
        let logits = logits.to_vec()?;
        metrics::check_logits(&logits, classes, |r| {
            format!("'{}'", ds.name(batch.indices[r]))
        })?;
        for (row, &v) in logits.chunks(classes).zip(&batch.indices) {
            let p = metrics::softmax(row);
            let e = sums[v].get_or_insert_with(|| (vec![0.0; classes], 0));
            e.0.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
            e.1 += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if dist.world_size() > 1 {
        sums = gather_video_scores(dist, sums, classes)?;
    }
    if let Some(&bad) = label_map.iter().find(|&&k| k >= classes) {
        return Err(Error::arg(
            "evaluate",
            format!("class index {bad} for a model of {classes} classes"),
        ));
    }
    let mut m = Metrics::new(classes);
    for (v, s) in sums.into_iter().enumerate() {
        if let Some((p, n)) = s {
            let p: Vec<f32> = p.iter().map(|x| x / n as f32).collect();
            let label = label_map[ds.label(v)];
            m.add(&p, label, -(p[label].max(1e-12) as f64).ln());
        }
    }
    Ok(m)
}

/// Every rank's per-video scores: each video's mean over its views, summed over the ranks (one rank
/// holds each video; the others contribute zeros, so the sum is exact).
fn gather_video_scores(
    dist: &dyn Collective,
    sums: VideoScores,
    classes: usize,
) -> Result<VideoScores> {
    let mut classes_seen = [classes as f64, 1.0];
    dist.all_reduce_sum_f64(&mut classes_seen)?;
    if classes_seen[0] != (classes * dist.world_size()) as f64 || classes == 0 {
        return Err(Error::Distributed(format!(
            "rank {} evaluated a model of {classes} classes, the ranks together {}",
            dist.rank(),
            classes_seen[0]
        )));
    }
    let row = classes + 1; // mean scores, then 1 for a video this rank evaluated
    let mut flat = vec![0f32; sums.len() * row];
    for (v, s) in sums.iter().enumerate() {
        if let Some((p, n)) = s {
            let r = &mut flat[v * row..(v + 1) * row];
            r[..classes]
                .iter_mut()
                .zip(p)
                .for_each(|(a, b)| *a = b / *n as f32);
            r[classes] = 1.0;
        }
    }
    dist.all_reduce_sum(&mut flat)?;
    flat.chunks(row)
        .map(|r| match r[classes] {
            0.0 => Ok(None),
            1.0 => Ok(Some((r[..classes].to_vec(), 1))),
            k => Err(Error::Distributed(format!(
                "a validation video was evaluated by {k} ranks"
            ))),
        })
        .collect()
}

fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

fn draw_curves(dir: &Path, history: &[Value]) -> Result<()> {
    let get = |k: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|h| Some((h["epoch"].as_f64()? + 1.0, h[k].as_f64()?)))
            .collect()
    };
    use plotters::style::RGBColor;
    plot::line_chart(
        &dir.join("loss.png"),
        "loss",
        "epoch",
        "cross entropy",
        &[
            plot::Series {
                name: "train",
                points: get("train_loss"),
                color: RGBColor(31, 119, 180),
            },
            plot::Series {
                name: "validation",
                points: get("val_loss"),
                color: RGBColor(255, 127, 14),
            },
        ],
    )?;
    plot::line_chart(
        &dir.join("accuracy.png"),
        "accuracy",
        "epoch",
        "accuracy (%)",
        &[
            plot::Series {
                name: "train top-1",
                points: get("train_top1"),
                color: RGBColor(31, 119, 180),
            },
            plot::Series {
                name: "val top-1",
                points: get("val_top1"),
                color: RGBColor(255, 127, 14),
            },
            plot::Series {
                name: "val top-5",
                points: get("val_top5"),
                color: RGBColor(44, 160, 44),
            },
        ],
    )
}

/// Where a resumed run continues.
struct Resumed {
    next_epoch: usize,
    step: usize,
    best_top1: f64,
}

/// Load the run's `last.safetensors` (in `out`) into `net` and `opt`, after checking that the `best`
/// it records exists and that it was trained by as many processes as `world` (the data order and the
/// global batch depend on it).
fn resume(
    out: &Path,
    net: &mut Network,
    opt: &mut dyn Optimizer,
    world: usize,
    verbose: bool,
) -> Result<Resumed> {
    let last_path = out.join("last.safetensors");
    let ck = checkpoint::load(&last_path, net.device())?;
    let m = &ck.meta;
    let stored_world = m["world_size"].as_u64().unwrap_or(1) as usize;
    if stored_world != world {
        return Err(Error::arg(
            "train",
            format!(
                "--resume: {} was trained by {stored_world} process(es), this run has {world}: resume with the same number of processes",
                last_path.display()
            ),
        ));
    }
    let best_top1 = m["best_top1"].as_f64().unwrap_or(f64::NEG_INFINITY);
    let best = out.join("best.safetensors");
    if best_top1.is_finite() {
        let problem = if !best.exists() {
            Some("is missing")
        } else if checkpoint::read_meta(&best)?.is_none() {
            Some("is not a vidgrad checkpoint")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::arg(
                "train",
                format!(
                    "--resume: {} records a best validation top-1 of {:.1}% but {} {problem}; restore it, or start over with --overwrite",
                    last_path.display(),
                    100.0 * best_top1,
                    best.display()
                ),
            ));
        }
    }
    net.load_state_dict(&ck.weights, true)?;
    opt.load_state_dict(&ck.optimizer)?;
    net.set_forward_count(m["forward_count"].as_u64().unwrap_or(0));
    let next_epoch = m["epoch"].as_u64().unwrap_or(0) as usize + 1;
    if verbose {
        eprintln!(
            "resuming from {} after epoch {next_epoch}",
            last_path.display()
        );
    }
    Ok(Resumed {
        next_epoch,
        step: m["step"].as_u64().unwrap_or(0) as usize,
        best_top1,
    })
}

/// An epoch must hold at least one training batch on every rank (`per_rank` videos each of
/// `world`), and every rank at least one validation video.
fn check_batches(
    cfg: &TrainConfig,
    train_videos: usize,
    per_rank: usize,
    val_videos: usize,
    world: usize,
) -> Result<()> {
    if cfg.drop_last && per_rank < cfg.batch_size {
        let share = if world > 1 {
            format!(" ({per_rank} for each of {world} processes)")
        } else {
            String::new()
        };
        return Err(Error::arg(
            "train",
            format!(
                "the training split has {train_videos} videos{share}, fewer than --batch-size {}: with --drop-last (the default) no batch is complete; lower --batch-size",
                cfg.batch_size
            ),
        ));
    }
    if val_videos < world {
        return Err(Error::arg(
            "train",
            format!(
                "the validation split has {val_videos} videos, fewer than the {world} processes that share it"
            ),
        ));
    }
    Ok(())
}

/// The error of a training batch of one clip, which train-mode batch norm may be unable to normalise,
/// with the flag to change.
fn one_clip_batch_error(cfg: &TrainConfig, train_videos: usize, e: Error) -> Error {
    let advice = if cfg.batch_size == 1 {
        "raise --batch-size".to_string()
    } else {
        format!(
            "the last batch of an epoch ({train_videos} videos, --batch-size {}) holds one clip: keep --drop-last (the default) or change --batch-size",
            cfg.batch_size
        )
    };
    Error::arg(
        "train",
        format!("a training batch of one clip: {e}; {advice}"),
    )
}

/// Train `cfg.model` on `train`, validating on `val` after every epoch.
pub fn fit(cfg: &TrainConfig, train: Arc<Dataset>, val: Arc<Dataset>) -> Result<TrainSummary> {
    fit_distributed(cfg, train, val, &SingleProcess)
}

/// [`fit`] as one rank of a data-parallel job (every rank calls it with the same configuration and
/// data): PyTorch DistributedDataParallel's semantics, `cfg.batch_size` clips per rank and step
/// (docs/DISTRIBUTED.md). With [`SingleProcess`] it is [`fit`].
pub fn fit_distributed(
    cfg: &TrainConfig,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
    dist: &dyn Collective,
) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let (rank, world, root) = (dist.rank(), dist.world_size(), dist.is_root());
    if train.is_empty() || val.is_empty() {
        return Err(Error::arg(
            "train",
            format!(
                "empty split: {} training and {} validation videos",
                train.len(),
                val.len()
            ),
        ));
    }
    let classes = train.classes().to_vec();
    let identity: Vec<usize> = (0..classes.len()).collect();
    let mut model_opts = cfg.model_opts.clone();
    model_opts.classes = Some(model_opts.classes.unwrap_or(classes.len()));
    if model_opts.classes != Some(classes.len()) {
        return Err(Error::arg(
            "train",
            format!(
                "--classes {} but the data has {} classes",
                model_opts.classes.unwrap(),
                classes.len()
            ),
        ));
    }
    if cfg.resume && cfg.overwrite {
        return Err(Error::arg(
            "train",
            "--resume and --overwrite exclude each other: continue the run or replace it",
        ));
    }
    let input_shape = cfg.input_shape(cfg.batch_size);
    let graph = match &cfg.model_fn {
        Some(build) => (build.0)(&input_shape)?,
        None => models::build(&cfg.model, &model_opts, &input_shape)?,
    };
    let mut net = Network::new(graph, cfg.device, cfg.seed)?;
    net.set_check_finite(cfg.check_finite);
    // before the loaders allocate batches: a plan larger than the memory is an error, not an abort
    net.check_memory(true)?;
    let mut opt = build_optimizer(cfg, &net)?;
    let loader = Loader::new(
        train.clone(),
        cfg.clip.clone(),
        cfg.batch_size,
        true,
        cfg.seed,
        cfg.workers,
        cfg.prefetch,
    )
    .drop_last(cfg.drop_last)
    .shard(rank, world, true);
    let val_loader = Loader::new(
        val.clone(),
        cfg.val_clip(),
        cfg.batch_size,
        false,
        cfg.seed,
        cfg.workers,
        cfg.prefetch,
    )
    .shard(rank, world, false);
    let steps_per_epoch = loader.batches_per_epoch();
    check_batches(
        cfg,
        train.len(),
        loader.videos_per_epoch(),
        val.len(),
        world,
    )?;
    let schedule = build_schedule(cfg, steps_per_epoch);
    if cfg.epochs == 0 && !cfg.resume {
        return Ok(TrainSummary::default()); // nothing to train: the output folder is left as it is
    }
    let start = match (cfg.resume, cfg.overwrite) {
        (true, _) => Start::Resume,
        (false, true) => Start::Overwrite,
        (false, false) => Start::New,
    };
    // only rank 0 owns (locks, clears, writes) the run folder; the others read a resumed checkpoint
    let run = if root {
        Some(RunDir::open(&cfg.out_dir, start)?)
    } else {
        None
    };
    let metrics_path = cfg.out_dir.join("metrics.jsonl");
    let last_path = cfg.out_dir.join("last.safetensors");
    let best_path = cfg.out_dir.join("best.safetensors");

    let (mut start_epoch, mut step, mut best_top1) = (0usize, 0usize, f64::NEG_INFINITY);
    if cfg.resume {
        let resumed = resume(&cfg.out_dir, &mut net, opt.as_mut(), world, root)?;
        (start_epoch, step, best_top1) = (resumed.next_epoch, resumed.step, resumed.best_top1);
    }
    // DDP: every rank starts from rank 0's parameters and buffers
    let state: Vec<(String, Tensor)> = net.state_dict().into_iter().collect();
    dist::ddp::broadcast_tensors(dist, &state)?;
    let params = net.parameters();
    let buffers = net.buffers();
    let mut history: Vec<Value> = vec![];
    if root {
        truncate_log(&metrics_path, start_epoch)?;
        history = std::fs::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "epoch")
            .collect();
    }

    let mut summary = TrainSummary {
        epochs_run: 0,
        best_top1: best_top1.max(0.0),
        last: None,
        step_losses: vec![],
        seconds: 0.0,
        data_wait_seconds: 0.0,
        files: vec![],
    };
    // how clips were made, for inference to cut equivalent ones from any resolution
    let transform = checkpoint::transform_json(&cfg.clip, &train);
    // problems met while loading clips, counted per epoch (training and validation together)
    let data_warnings = || {
        train.warning_count()
            + if val.shares_warnings_with(&train) {
                0
            } else {
                val.warning_count()
            }
    };
    let end_epoch = cfg
        .stop_after_epochs
        .map_or(cfg.epochs, |n| (start_epoch + n).min(cfg.epochs));
    for epoch in start_epoch..end_epoch {
        net.train();
        let bar = progress_bar(
            cfg.progress && root,
            steps_per_epoch as u64,
            &format!("epoch {}", epoch + 1),
        );
        let (mut loss_sum, mut hits, mut seen) = (0f64, 0usize, 0usize);
        let epoch_start = Instant::now();
        let warnings_before = data_warnings();
        loader.reset_wait_time();
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            let lr = schedule.lr(cfg.lr, step);
            opt.set_lr(lr);
            let x = Tensor::from_vec(batch.data, &batch.shape, cfg.device)?;
            // DDP's broadcast_buffers: the batch-norm running statistics follow rank 0's
            dist::ddp::broadcast_tensors(dist, &buffers)?;
            // --sync-bn: the batch norms of this forward and its backward use every rank's batch
            let logits = match dist::sync_bn::scope(dist, cfg.sync_bn, || net.forward(&[&x])) {
                Err(e) if batch.labels.len() == 1 => {
                    return Err(one_clip_batch_error(cfg, train.len(), e))
                }
                r => r?,
            };
            let loss = ops::cross_entropy(&logits, &batch.labels, cfg.label_smoothing)?;
            let l = logits.to_vec()?;
            let mut step_hits = 0usize;
            for (row, &y) in l.chunks(classes.len()).zip(&batch.labels) {
                step_hits += (metrics::top_k(row, 1)[0] == y) as usize;
            }
            // the step's loss over every rank's clips (every rank sees the same value, so a
            // non-finite one stops them all)
            let mut reduced = [
                loss.item()? as f64 * batch.labels.len() as f64,
                batch.labels.len() as f64,
                step_hits as f64,
            ];
            dist.all_reduce_sum_f64(&mut reduced)?;
            let lv = if world == 1 {
                loss.item()?
            } else {
                (reduced[0] / reduced[1]) as f32
            };
            if !lv.is_finite() {
                return Err(Error::arg(
                    "train",
                    format!(
                        "the loss is {lv} at epoch {} step {step}: training stopped; the last good checkpoint ({}) is intact",
                        epoch + 1,
                        if last_path.exists() { last_path.display().to_string() } else { "none yet".into() }
                    ),
                ));
            }
            // DDP: gradients averaged over the ranks, buckets started while backward runs
            dist::sync_bn::scope(dist, cfg.sync_bn, || {
                dist::ddp::backward_averaged(
                    dist,
                    &params,
                    &loss,
                    cfg.ddp_overlap,
                    cfg.ddp_bucket_bytes,
                )
            })?;
            if let Some(max) = cfg.clip_grad {
                opt.clip_grad_norm(max)?;
            }
            opt.step()?;
            opt.zero_grad();
            hits += reduced[2] as usize;
            seen += reduced[1] as usize;
            loss_sum += if world == 1 {
                lv as f64 * batch.labels.len() as f64
            } else {
                reduced[0]
            };
            summary.step_losses.push(lv);
            if root {
                log_json(
                    &metrics_path,
                    &json!({"kind": "step", "epoch": epoch, "step": step, "loss": lv, "lr": lr}),
                )?;
            }
            step += 1;
            let rate = seen as f64 / epoch_start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {lv:.4} lr {lr:.2e} {rate:.1} clips/s"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let wait = loader.wait_time().as_secs_f64();
        summary.data_wait_seconds += wait;
        let train_time = epoch_start.elapsed().as_secs_f64();
        let m = evaluate_distributed(&mut net, &val_loader, &identity, cfg.progress && root, dist)?;
        // every rank's data warnings (each prints its own below)
        let mut epoch_warnings = [(data_warnings() - warnings_before) as f64];
        dist.all_reduce_sum_f64(&mut epoch_warnings)?;
        let epoch_warnings = epoch_warnings[0] as usize;
        let context = if world > 1 {
            format!("epoch {} (rank {rank}): ", epoch + 1)
        } else {
            format!("epoch {}: ", epoch + 1)
        };
        crate::data::print_new_warnings(&train, &context);
        if !val.shares_warnings_with(&train) {
            crate::data::print_new_warnings(&val, &context);
        }
        let record = json!({
            "kind": "epoch", "epoch": epoch, "step": step,
            "train_loss": loss_sum / seen.max(1) as f64, "train_top1": 100.0 * hits as f64 / seen.max(1) as f64,
            "val_loss": m.mean_loss(), "val_top1": 100.0 * m.top1(), "val_top5": 100.0 * m.top5(),
            "clips_per_second": seen as f64 / train_time, "data_wait_seconds": wait,
            "data_warnings": epoch_warnings,
            "seconds": t0.elapsed().as_secs_f64(),
            "val": m.to_json(&classes),
        });
        summary.epochs_run += 1;
        summary.best_top1 = best_top1.max(m.top1());
        if !root {
            best_top1 = best_top1.max(m.top1());
            summary.last = Some(m);
            continue;
        }
        log_json(&metrics_path, &record)?;
        eprintln!(
            "epoch {}/{}: train loss {:.4} top-1 {:.1}% | val top-1 {:.1}% top-5 {:.1}% | {:.1} clips/s, waited {:.1}s for data, {} data warnings",
            epoch + 1,
            cfg.epochs,
            record["train_loss"].as_f64().unwrap(),
            record["train_top1"].as_f64().unwrap(),
            100.0 * m.top1(),
            100.0 * m.top5(),
            record["clips_per_second"].as_f64().unwrap(),
            wait,
            epoch_warnings
        );
        history.push(record);
        draw_curves(&cfg.out_dir, &history)?;

        let improved = m.top1() > best_top1;
        best_top1 = best_top1.max(m.top1());
        let meta = json!({
            "epoch": epoch, "step": step, "forward_count": net.forward_count(), "best_top1": best_top1,
            "val_top1": m.top1(), "classes": classes, "model": cfg.model, "config": cfg.to_json(),
            "settings": cfg.settings, "transform": transform, "world_size": world,
            "dist_backend": dist.backend_name(),
            "gradient_transport": (world > 1)
                .then(|| dist::device::for_device(dist, cfg.device).get().name()),
        });
        let state = opt.state_dict()?;
        // best before last: `last` records the best accuracy, so whenever a `last` exists the `best`
        // it speaks of exists too (a kill between the two re-runs this epoch and rewrites the same
        // `best`).
        if improved {
            checkpoint::save(&best_path, &net.state_dict(), &state, &meta)?;
        }
        checkpoint::save(&last_path, &net.state_dict(), &state, &meta)?;
        summary.last = Some(m);
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    if let Some(run) = &run {
        summary.files = run
            .existing_files()
            .into_iter()
            .map(|f| run.path().join(f))
            .collect();
    }
    Ok(summary)
}
