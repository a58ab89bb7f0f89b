//! Command-line arguments of training, shared by `vidgrad train` and `examples/train_eco.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde_json::{json, Map, Value};

use super::{checkpoint, fit_distributed, OptimizerKind, ScheduleKind, TrainConfig, TrainSummary};
use crate::data::{CropMode, Dataset, FolderOptions, SynthConfig};
use crate::device::Device;
use crate::error::{Error, Result};

/// The largest frame side `--size` and `--resize-short` accept (beyond it ffmpeg's scaler and the
/// frame buffers fail far from the flag that caused it).
pub const MAX_FRAME_SIDE: usize = 8192;

/// clap value parser: an integer of at least 1.
fn dist_backend(s: &str) -> std::result::Result<crate::dist::DistBackend, String> {
    s.parse().map_err(|e: crate::error::Error| e.to_string())
}

pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

/// clap value parser: a finite number (not inf or NaN).
pub fn finite(s: &str) -> std::result::Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err("must be finite".into())
    }
}

/// clap value parser: a frame side in pixels, 1..=[`MAX_FRAME_SIDE`].
pub fn frame_side(s: &str) -> std::result::Result<usize, String> {
    let v = positive(s)?;
    if v > MAX_FRAME_SIDE {
        return Err(format!("at most {MAX_FRAME_SIDE} pixels"));
    }
    Ok(v)
}

/// clap value parser: a short-side resize, 0 (keep the frames' size) or a frame side.
pub fn resize_side(s: &str) -> std::result::Result<usize, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    frame_side(s)
        .map_err(|e| format!("0 (no resize) or a side of 1..={MAX_FRAME_SIDE} pixels: {e}"))
}

/// Where the videos come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// A dataset folder (ROOT/<class>/<video>/img_%05d.jpg frame folders or ROOT/<class>/<video>.mp4
    /// files), or `synthetic` for the built-in action set.
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Class names (one per line: `name`, `name,id` or `id,name`); default: folder names or ROOT/labels.csv.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// mmaction2-style list file of the training split (`path num_frames label`).
    #[arg(long)]
    pub train_list: Option<PathBuf>,
    /// mmaction2-style list file of the validation split.
    #[arg(long)]
    pub val_list: Option<PathBuf>,
    /// Without list files: the fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2, value_parser = finite)]
    pub val_ratio: f32,
    /// Synthetic set: number of classes (10–12).
    #[arg(long, default_value_t = 10)]
    pub synth_classes: usize,
    /// Synthetic set: videos per class.
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub synth_videos: usize,
    /// Synthetic set: frames per video.
    #[arg(long, default_value_t = 32)]
    pub synth_frames: usize,
    /// Synthetic set: frame side in pixels (default: the resize target, else the crop size).
    #[arg(long)]
    pub synth_size: Option<usize>,
    /// Make every data problem an error instead of a counted warning: unreadable frames, videos
    /// shorter than the clip or with fewer decodable frames than reported, video folders without
    /// frames, unreadable video files, list entries that do not exist.
    #[arg(long)]
    pub strict_data: bool,
}

impl DataArgs {
    /// (train, validation) datasets.
    pub fn load(&self, seed: u64, frame_size: usize) -> Result<(Arc<Dataset>, Arc<Dataset>)> {
        if self.data == "synthetic" {
            let mut ds = Dataset::synthetic(&SynthConfig {
                classes: self.synth_classes,
                videos_per_class: self.synth_videos,
                frames: self.synth_frames,
                size: self.synth_size.unwrap_or(frame_size),
                seed,
            });
            ds.set_strict(self.strict_data);
            let (t, v) = ds.split(self.val_ratio, seed);
            print_warnings(&t, &v);
            return Ok((Arc::new(t), Arc::new(v)));
        }
        let root = PathBuf::from(&self.data);
        let opts = |list: &Option<PathBuf>| FolderOptions {
            labels_csv: self.labels.clone(),
            list_file: list.clone(),
            strict: self.strict_data,
            ..Default::default()
        };
        let (t, v) = match (&self.train_list, &self.val_list) {
            (Some(_), Some(_)) => (
                Dataset::open(&root, &opts(&self.train_list))?,
                Dataset::open(&root, &opts(&self.val_list))?,
            ),
            (None, None) => Dataset::open(&root, &opts(&None))?.split(self.val_ratio, seed),
            _ => {
                return Err(Error::arg(
                    "train",
                    "give both --train-list and --val-list, or neither",
                ))
            }
        };
        print_warnings(&t, &v);
        Ok((Arc::new(t), Arc::new(v)))
    }
}

/// Print the warnings of a training and a validation split once each (the parts of one split share
/// their dataset's warnings).
fn print_warnings(train: &Dataset, val: &Dataset) {
    crate::data::print_new_warnings(train, "");
    if !val.shares_warnings_with(train) {
        crate::data::print_new_warnings(val, "");
    }
}

/// Everything of `vidgrad train` but the model choice (see [`TrainArgs::config`]).
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of classes (default: the data's).
    #[arg(long, value_parser = positive)]
    pub classes: Option<usize>,
    /// Dropout before the classifier (default: the model's).
    #[arg(long, value_parser = finite)]
    pub dropout: Option<f32>,
    /// Frames per clip (segments).
    #[arg(long, value_parser = positive)]
    pub frames: Option<usize>,
    /// Crop size.
    #[arg(long, value_parser = frame_side)]
    pub size: Option<usize>,
    /// Resize the short side to this before cropping (0: keep).
    #[arg(long, value_parser = resize_side)]
    pub resize_short: Option<usize>,
    /// Random horizontal flips (off by default: they swap left/right motion classes).
    #[arg(long)]
    pub flip: bool,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, value_parser = positive)]
    pub batch_size: Option<usize>,
    #[arg(long, value_parser = finite)]
    pub lr: Option<f32>,
    /// sgd or adamw.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    pub optimizer: String,
    #[arg(long, default_value_t = 0.9, value_parser = finite)]
    pub momentum: f32,
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, value_parser = finite)]
    pub weight_decay: Option<f32>,
    /// cosine, step, multistep or constant.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "step", "multistep", "constant"])]
    pub schedule: String,
    /// step: decay every N epochs.
    #[arg(long, default_value_t = 10, value_parser = positive)]
    pub step_epochs: usize,
    /// multistep: the epochs to decay at, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Vec<usize>,
    #[arg(long, default_value_t = 0.1, value_parser = finite)]
    pub gamma: f32,
    #[arg(long, value_parser = finite)]
    pub warmup_epochs: Option<f32>,
    /// Clip the global gradient norm.
    #[arg(long, value_parser = finite)]
    pub clip_grad: Option<f32>,
    #[arg(long, default_value_t = 0.0, value_parser = finite)]
    pub label_smoothing: f32,
    /// Clips per video when validating.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub val_clips: usize,
    /// Validate on three crops per clip instead of the centre one.
    #[arg(long)]
    pub three_crop: bool,
    /// Background decode workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Batches decoded ahead.
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda, cuda:N or cuda-sim (the simulated CUDA device, for testing; docs/CUDA-SIM.md). Default:
    /// cuda when available, else cpu.
    #[arg(long)]
    pub device: Option<String>,
    /// Leave out each epoch's last training batch when it is incomplete (a batch of one clip cannot be
    /// batch-normalised); `--drop-last false` keeps it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub drop_last: bool,
    /// Output folder: checkpoints (last/best.safetensors), metrics.jsonl, loss.png, accuracy.png.
    /// One live run per folder (OUT/train.lock); an earlier run there needs --resume or --overwrite.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue the run in OUT from OUT/last.safetensors, with the settings stored there (a flag that
    /// contradicts them is an error).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the earlier run in OUT (its checkpoints, metrics and curves are deleted first).
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Fail at the first layer whose output or gradient holds NaN/Inf, naming it (slow: each check
    /// copies the tensor to the host; PyTorch's detect_anomaly).
    #[arg(long)]
    pub check_finite: bool,
    /// Data-parallel runs: batch norm normalises with the statistics of every process's batch together
    /// (PyTorch's SyncBatchNorm), so N processes × batch B train as one process × batch N·B; without
    /// it each process uses its own batch's statistics (docs/DISTRIBUTED.md). No effect in one process.
    #[arg(long)]
    pub sync_bn: bool,
    /// Data-parallel runs: what joins the processes. auto: NCCL when the model is on a CUDA GPU and
    /// libnccl loads, else MPI; nccl: NCCL (an error where it cannot run: CPU, cuda-sim, no
    /// libnccl); mpi: MPI, tensors on a device staged through host memory (docs/DISTRIBUTED.md).
    #[arg(long, default_value = "auto", value_parser = dist_backend)]
    pub dist_backend: crate::dist::DistBackend,
    /// Start N processes on this machine for data-parallel training (like torchrun's
    /// --nproc-per-node): this command runs itself N times under `mpirun -np N` (needs the `mpi`
    /// feature and mpirun on the PATH) and waits; a failing process ends the job, naming its rank.
    #[arg(long, value_parser = positive)]
    pub nproc_per_node: Option<usize>,
    /// The flags the command line gave (see [`TrainArgs::note_given_flags`]).
    #[arg(skip)]
    pub given: BTreeSet<String>,
}

/// Defaults applied where an argument was not given.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub frames: usize,
    pub size: usize,
    pub resize_short: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub warmup_epochs: f32,
}

impl Defaults {
    /// Full-size clips (16 frames × 224², short side 256), for a GPU.
    pub fn gpu() -> Defaults {
        Defaults {
            frames: 16,
            size: 224,
            resize_short: 256,
            epochs: 10,
            batch_size: 8,
            lr: 0.01,
            weight_decay: 5e-4,
            warmup_epochs: 0.0,
        }
    }

    /// The CPU preset: small clips so that an epoch of the synthetic set takes about a minute on two
    /// cores (README gives the measured time and accuracy). No resize: the synthetic set is rendered
    /// at the frame size; for real videos [`TrainArgs::config`] resizes the short side to 73.
    pub fn cpu() -> Defaults {
        Defaults {
            frames: 8,
            size: 64,
            resize_short: 0,
            epochs: 5,
            batch_size: 8,
            lr: 0.01,
            weight_decay: 5e-4,
            warmup_epochs: 0.5,
        }
    }

    /// [`Defaults::cpu`] on the CPU, else [`Defaults::gpu`].
    pub fn for_device(device: Device) -> Defaults {
        if device == Device::Cpu {
            Defaults::cpu()
        } else {
            Defaults::gpu()
        }
    }
}

/// Declares the flags a run stores in its checkpoints (by clap id, the field name) and `--resume`
/// restores: [`TrainArgs::settings`] reads them, [`TrainArgs::set_setting`] writes one back.
macro_rules! stored_settings {
    ($($id:literal => $($field:ident).+),* $(,)?) => {
        impl TrainArgs {
            /// The run's stored settings by clap id (after [`TrainArgs::fill_defaults`]: as run).
            pub fn settings(&self) -> Map<String, Value> {
                let mut m = Map::new();
                $(m.insert($id.into(), serde_json::to_value(&self.$($field).+).unwrap_or(Value::Null));)*
                m
            }

            /// Set the flag `id` to a value of [`TrainArgs::settings`]; an id this version does not
            /// know is left out.
            fn set_setting(&mut self, id: &str, v: &Value) -> Result<()> {
                match id {
                    $($id => {
                        self.$($field).+ = serde_json::from_value(v.clone()).map_err(|e| {
                            Error::arg("train", format!("--resume: the stored --{} ({v}) is unreadable: {e}", flag(id)))
                        })?
                    })*
                    _ => {}
                }
                Ok(())
            }
        }
    };
}

stored_settings! {
    "data" => data.data, "labels" => data.labels, "train_list" => data.train_list,
    "val_list" => data.val_list, "val_ratio" => data.val_ratio, "synth_classes" => data.synth_classes,
    "synth_videos" => data.synth_videos, "synth_frames" => data.synth_frames,
    "synth_size" => data.synth_size, "classes" => classes, "dropout" => dropout, "frames" => frames,
    "size" => size, "resize_short" => resize_short, "flip" => flip, "epochs" => epochs,
    "batch_size" => batch_size, "lr" => lr, "optimizer" => optimizer, "momentum" => momentum,
    "nesterov" => nesterov, "weight_decay" => weight_decay, "schedule" => schedule,
    "step_epochs" => step_epochs, "milestones" => milestones, "gamma" => gamma,
    "warmup_epochs" => warmup_epochs, "clip_grad" => clip_grad, "label_smoothing" => label_smoothing,
    "val_clips" => val_clips, "three_crop" => three_crop, "seed" => seed, "drop_last" => drop_last,
    "sync_bn" => sync_bn,
}

/// A setting as the user types it: strings bare, numbers stored from an f32 in their shortest f32 form.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format!("{}", n.as_f64().unwrap_or(f64::NAN) as f32),
        Value::Null => "(not set)".into(),
        v => v.to_string(),
    }
}

/// A clap id as the user types it (`batch_size` → `batch-size`).
fn flag(id: &str) -> String {
    id.replace('_', "-")
}

/// The stored settings of the run in `out`, with its model and model options; `None` when `out` has
/// no checkpoint or one written before settings were stored.
fn stored_run(out: &Path) -> Result<Option<Value>> {
    let last = out.join("last.safetensors");
    if !last.exists() {
        return Ok(None);
    }
    Ok(checkpoint::read_meta(&last)?.and_then(|m| {
        let settings = m.get("settings").filter(|s| s.is_object())?;
        Some(
            json!({"model": m["model"], "opt": m["config"]["model_options"], "settings": settings}),
        )
    }))
}

impl TrainArgs {
    pub fn device(&self) -> Result<Device> {
        match &self.device {
            None => Ok(Device::best()),
            Some(s) => {
                let d = Device::parse(s)?;
                d.backend()?;
                Ok(d)
            }
        }
    }

    /// Record which flags the command line gave (`m`: the matches of the command these arguments are
    /// flattened into); on `--resume` the others come from the run's checkpoint.
    pub fn note_given_flags(&mut self, m: &ArgMatches) {
        self.given = self
            .settings()
            .keys()
            .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
            .cloned()
            .collect();
    }

    /// With `--resume`, take the settings stored in the run's checkpoint for every flag not given, and
    /// refuse a given one that contradicts them; `model` and `opts` likewise (`model_given`: whether
    /// the user chose the model). Returns the model and its options.
    fn restore_settings(
        &mut self,
        model: Option<&str>,
        model_given: bool,
        opts: Vec<(String, String)>,
    ) -> Result<(String, Vec<(String, String)>)> {
        let stored = if self.resume {
            stored_run(&self.out)?
        } else {
            None
        };
        if self.resume && model.is_none() && stored.is_none() {
            super::run_dir::check_not_in_use(&self.out)?;
            return Err(super::run_dir::nothing_to_resume(&self.out, ""));
        }
        let Some(stored) = stored else {
            let model = model.ok_or_else(|| Error::arg("train", "--model is required"))?;
            return Ok((model.to_string(), opts));
        };
        let source = self.out.join("last.safetensors");
        let conflict = |what: String, given: &Value, kept: &Value| {
            Error::arg(
                "train",
                format!(
                    "--resume: {what} {} conflicts with {} stored in {} (a resumed run keeps its settings; drop the flag, or start a new run with --overwrite or another --out)",
                    show(given),
                    show(kept),
                    source.display()
                ),
            )
        };
        let stored_model = stored["model"].as_str().unwrap_or_default().to_string();
        match model {
            Some(m) if m != stored_model => {
                let what = if model_given { "--model" } else { "model" };
                return Err(conflict(what.into(), &json!(m), &stored["model"]));
            }
            _ => {}
        }
        let stored_opts: Vec<(String, String)> = stored["opt"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut given_opts = opts.clone();
        given_opts.sort();
        if !opts.is_empty() && given_opts != stored_opts {
            let show_opts = |o: &[(String, String)]| {
                o.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(conflict(
                "--opt".into(),
                &json!(show_opts(&given_opts)),
                &json!(show_opts(&stored_opts)),
            ));
        }
        let current = self.settings();
        for (id, kept) in stored["settings"].as_object().into_iter().flatten() {
            if self.given.contains(id) {
                let given = &current[id];
                if given != kept {
                    return Err(conflict(format!("--{}", flag(id)), given, kept));
                }
            } else {
                self.set_setting(id, kept)?;
            }
        }
        Ok((stored_model, stored_opts))
    }

    /// Fill the flags left unset from `d`; on the CPU, say which values the CPU preset chose.
    fn fill_defaults(&mut self, d: &Defaults, device: Device) {
        let mut filled = vec![];
        let mut fill = |slot: &mut Option<usize>, v: usize, what: &str| {
            if slot.is_none() {
                *slot = Some(v);
                filled.push(format!("{what} {v}"));
            }
        };
        fill(&mut self.frames, d.frames, "--frames");
        fill(&mut self.size, d.size, "--size");
        // "no resize" suits the synthetic set, rendered at the frame size; real videos are resized
        // first, as 256 is to 224
        let resize_short = match (d.resize_short, self.data.data.as_str()) {
            (0, data) if data != "synthetic" => {
                (self.size.unwrap_or(d.size) as f64 * 256.0 / 224.0).round() as usize
            }
            (r, _) => r,
        };
        fill(&mut self.resize_short, resize_short, "--resize-short");
        fill(&mut self.batch_size, d.batch_size, "--batch-size");
        fill(&mut self.epochs, d.epochs, "--epochs");
        self.lr.get_or_insert(d.lr);
        self.weight_decay.get_or_insert(d.weight_decay);
        self.warmup_epochs.get_or_insert(d.warmup_epochs);
        if !filled.is_empty() && device == Device::Cpu {
            eprintln!(
                "on the CPU: the CPU preset's {} (give these flags to change them)",
                filled.join(", ")
            );
        }
    }

    /// The run's configuration: with `--resume`, the settings stored in OUT's checkpoint (the model
    /// too: `model` may then be `None`); else the flags, with `d` filling what was not given.
    /// `model_given`: whether `model` is the user's choice (a flag) rather than the program's.
    pub fn config(
        &mut self,
        model: Option<&str>,
        model_given: bool,
        extra: Vec<(String, String)>,
        d: &Defaults,
    ) -> Result<TrainConfig> {
        let device = self.device()?;
        let (model, extra) = self.restore_settings(model, model_given, extra)?;
        self.fill_defaults(d, device);
        let mut cfg = TrainConfig::new(&model, device, &self.out)?;
        cfg.model_opts.classes = self.classes;
        cfg.model_opts.dropout = self.dropout;
        cfg.model_opts.extra = extra.into_iter().collect();
        cfg.clip.segments = self.frames.unwrap_or(d.frames);
        cfg.clip.size = self.size.unwrap_or(d.size);
        cfg.clip.resize_short = self.resize_short.unwrap_or(d.resize_short);
        cfg.clip.flip = self.flip;
        cfg.epochs = self.epochs.unwrap_or(d.epochs);
        cfg.batch_size = self.batch_size.unwrap_or(d.batch_size);
        cfg.lr = self.lr.unwrap_or(d.lr);
        cfg.optimizer = match self.optimizer.as_str() {
            "adamw" => OptimizerKind::AdamW,
            _ => OptimizerKind::Sgd {
                momentum: self.momentum,
                nesterov: self.nesterov,
            },
        };
        cfg.weight_decay = self.weight_decay.unwrap_or(d.weight_decay);
        cfg.schedule = match self.schedule.as_str() {
            "step" => ScheduleKind::Step {
                every: self.step_epochs,
                gamma: self.gamma,
            },
            "multistep" => ScheduleKind::MultiStep {
                epochs: self.milestones.clone(),
                gamma: self.gamma,
            },
            "constant" => ScheduleKind::Constant,
            _ => ScheduleKind::Cosine,
        };
        cfg.warmup_epochs = self.warmup_epochs.unwrap_or(d.warmup_epochs);
        cfg.clip_grad = self.clip_grad;
        cfg.label_smoothing = self.label_smoothing;
        cfg.val_clips = self.val_clips;
        cfg.val_crop = if self.three_crop {
            CropMode::ThreeCrop
        } else {
            CropMode::Center
        };
        cfg.workers = self.workers;
        cfg.prefetch = self.prefetch;
        cfg.seed = self.seed;
        cfg.resume = self.resume;
        cfg.overwrite = self.overwrite;
        cfg.drop_last = self.drop_last;
        cfg.progress = !self.quiet;
        cfg.check_finite = self.check_finite;
        cfg.sync_bn = self.sync_bn;
        cfg.settings = Value::Object(self.settings());
        Ok(cfg)
    }

    /// Load the data and train: as one rank of a data-parallel job when a launcher (torchrun,
    /// mpirun, srun) started this process as one of several (`dist::Placement::from_env`), on the
    /// GPU of its local rank unless `--device cuda:N` names one. An error on any rank ends the whole
    /// job (MPI_Abort), so that no rank waits for it forever. With `--nproc-per-node N` (N > 1), this
    /// process only starts the N that train (`dist::launch`), waits for them, and returns None.
    pub fn run(&self, cfg: &TrainConfig) -> Result<Option<TrainSummary>> {
        let placement = crate::dist::Placement::from_env()?;
        if let Some(n) = self.nproc_per_node.filter(|&n| n > 1) {
            crate::dist::launch::run_local_processes(n, &placement)?;
            return Ok(None);
        }
        self.run_placed(cfg, &placement).map(Some)
    }

    fn run_placed(
        &self,
        cfg: &TrainConfig,
        placement: &crate::dist::Placement,
    ) -> Result<TrainSummary> {
        let mut cfg = cfg.clone();
        if let (Device::Cuda(_), None | Some("cuda"), true) =
            (cfg.device, self.device.as_deref(), placement.world_size > 1)
        {
            cfg.device = Device::Cuda(placement.local_rank);
        }
        let dist = crate::dist::init_with(placement, self.dist_backend, cfg.device)?;
        if dist.world_size() == 1 {
            return self.run_on(&cfg, dist.as_ref());
        }
        // one write: the launcher interleaves the ranks' output at write boundaries
        let line = format!(
            "rank {} of {} (local rank {}, pid {}, {}) on {}, {} backend (--dist-backend {}), \
             gradient buckets {}\n",
            dist.rank(),
            dist.world_size(),
            dist.local_rank(),
            std::process::id(),
            placement.launcher.name(),
            cfg.device,
            dist.backend_name(),
            self.dist_backend.name(),
            crate::dist::device::for_device(dist.as_ref(), cfg.device)
                .get()
                .name()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        match self.run_on(&cfg, dist.as_ref()) {
            Ok(s) => {
                dist.barrier()?;
                Ok(s)
            }
            Err(e) => {
                let line = format!(
                    "error: rank {} of {}: {e}; ending the job\n",
                    dist.rank(),
                    dist.world_size()
                );
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                dist.abort(1);
                Err(e)
            }
        }
    }

    fn run_on(
        &self,
        cfg: &TrainConfig,
        dist: &dyn crate::dist::Collective,
    ) -> Result<TrainSummary> {
        let frame = if cfg.clip.resize_short > 0 {
            cfg.clip.resize_short
        } else {
            cfg.clip.size
        };
        let (train, val) = self.data.load(cfg.seed, frame)?;
        let world = dist.world_size();
        let per_rank = if world > 1 {
            format!(" per process × {world} processes")
        } else {
            String::new()
        };
        if !dist.is_root() {
            return fit_distributed(cfg, train, val, dist);
        }
        eprintln!(
            "training {} on {} ({} classes: {} training / {} validation videos), {} frames × {}², batch {}{per_rank}, {} epochs on {}, math {}",
            cfg.model,
            self.data.data,
            train.classes().len(),
            train.len(),
            val.len(),
            cfg.clip.segments,
            cfg.clip.size,
            cfg.batch_size,
            cfg.epochs,
            cfg.device,
            crate::math_mode::math_mode_on(crate::math_mode::Hardware::of(cfg.device))?
        );
        let s = fit_distributed(cfg, train, val, dist)?;
        eprintln!("{}", outcome(cfg, &s));
        Ok(s)
    }
}

/// What a finished `train` says: only files that exist.
fn outcome(cfg: &TrainConfig, s: &TrainSummary) -> String {
    if cfg.epochs == 0 {
        return "--epochs 0: nothing to train, no files written".into();
    }
    if s.epochs_run == 0 {
        return format!(
            "the run in {} has already finished its {} epochs: nothing to do (best validation top-1 {:.1}%)",
            cfg.out_dir.display(),
            cfg.epochs,
            100.0 * s.best_top1
        );
    }
    let names: Vec<String> = s
        .files
        .iter()
        .filter_map(|f| Some(f.file_name()?.to_string_lossy().into_owned()))
        .collect();
    format!(
        "done in {:.0} s: best validation top-1 {:.1}% ({} in {})",
        s.seconds,
        100.0 * s.best_top1,
        names.join(", "),
        cfg.out_dir.display()
    )
}
