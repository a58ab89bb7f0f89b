//! Command-line arguments of training, shared by `vidgrad train` and `examples/train_eco.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{fit, OptimizerKind, ScheduleKind, TrainConfig, TrainSummary};
use crate::data::{CropMode, Dataset, FolderOptions, SynthConfig};
use crate::device::Device;
use crate::error::{Error, Result};

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
    #[arg(long, default_value_t = 0.2)]
    pub val_ratio: f32,
    /// Synthetic set: number of classes (10–12).
    #[arg(long, default_value_t = 10)]
    pub synth_classes: usize,
    /// Synthetic set: videos per class.
    #[arg(long, default_value_t = 100)]
    pub synth_videos: usize,
    /// Synthetic set: frames per video.
    #[arg(long, default_value_t = 32)]
    pub synth_frames: usize,
    /// Synthetic set: frame side in pixels (default: the resize target, else the crop size).
    #[arg(long)]
    pub synth_size: Option<usize>,
}

impl DataArgs {
    /// (train, validation) datasets.
    pub fn load(&self, seed: u64, frame_size: usize) -> Result<(Arc<Dataset>, Arc<Dataset>)> {
        if self.data == "synthetic" {
            let ds = Dataset::synthetic(&SynthConfig {
                classes: self.synth_classes,
                videos_per_class: self.synth_videos,
                frames: self.synth_frames,
                size: self.synth_size.unwrap_or(frame_size),
                seed,
            });
            let (t, v) = ds.split(self.val_ratio, seed);
            return Ok((Arc::new(t), Arc::new(v)));
        }
        let root = PathBuf::from(&self.data);
        let opts = |list: &Option<PathBuf>| FolderOptions {
            labels_csv: self.labels.clone(),
            list_file: list.clone(),
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
        for w in t.warnings().iter().chain(v.warnings().iter()) {
            eprintln!("warning: {w}");
        }
        Ok((Arc::new(t), Arc::new(v)))
    }
}

/// Everything of `vidgrad train` but the model choice (see [`TrainArgs::config`]).
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of classes (default: the data's).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Dropout before the classifier (default: the model's).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Frames per clip (segments).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Crop size.
    #[arg(long)]
    pub size: Option<usize>,
    /// Resize the short side to this before cropping (0: keep).
    #[arg(long)]
    pub resize_short: Option<usize>,
    /// Random horizontal flips (off by default: they swap left/right motion classes).
    #[arg(long)]
    pub flip: bool,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    /// sgd or adamw.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    pub optimizer: String,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// cosine, step, multistep or constant.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "step", "multistep", "constant"])]
    pub schedule: String,
    /// step: decay every N epochs.
    #[arg(long, default_value_t = 10)]
    pub step_epochs: usize,
    /// multistep: the epochs to decay at, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Vec<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    #[arg(long)]
    pub warmup_epochs: Option<f32>,
    /// Clip the global gradient norm.
    #[arg(long)]
    pub clip_grad: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Clips per video when validating.
    #[arg(long, default_value_t = 1)]
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
    /// Output folder: checkpoints (last/best.safetensors), metrics.jsonl, loss.png, accuracy.png.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue from OUT/last.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Fail at the first layer whose output or gradient holds NaN/Inf, naming it (slow: each check
    /// copies the tensor to the host; PyTorch's detect_anomaly).
    #[arg(long)]
    pub check_finite: bool,
}

/// Model-specific defaults applied where an argument was not given.
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

    /// The run's configuration for `model` with `d` filling what was not given.
    pub fn config(
        &self,
        model: &str,
        extra: Vec<(String, String)>,
        d: &Defaults,
    ) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::new(model, self.device()?, &self.out)?;
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
        cfg.progress = !self.quiet;
        cfg.check_finite = self.check_finite;
        Ok(cfg)
    }

    /// Load the data and train.
    pub fn run(&self, cfg: &TrainConfig) -> Result<TrainSummary> {
        let frame = if cfg.clip.resize_short > 0 {
            cfg.clip.resize_short
        } else {
            cfg.clip.size
        };
        let (train, val) = self.data.load(cfg.seed, frame)?;
        eprintln!(
            "training {} on {} ({} classes: {} training / {} validation videos), {} frames × {}², batch {}, {} epochs on {}",
            cfg.model,
            self.data.data,
            train.classes().len(),
            train.len(),
            val.len(),
            cfg.clip.segments,
            cfg.clip.size,
            cfg.batch_size,
            cfg.epochs,
            cfg.device
        );
        let s = fit(cfg, train, val)?;
        eprintln!(
            "done in {:.0} s: best validation top-1 {:.1}% (checkpoints, metrics.jsonl, loss.png and accuracy.png in {})",
            s.seconds,
            100.0 * s.best_top1,
            cfg.out_dir.display()
        );
        Ok(s)
    }
}
