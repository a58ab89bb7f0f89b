//! The `vidgrad` command line.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use std::path::PathBuf;
use std::sync::Arc;

use vidgrad::data::{ClipSpec, CropMode, Dataset, FolderOptions, Loader, SynthConfig};
use vidgrad::exec::Network;
use vidgrad::models::{self, ModelOptions};
use vidgrad::train::args::{
    finite, frame_side, positive, resize_side, DataArgs, Defaults, TrainArgs,
};
use vidgrad::train::{checkpoint, metrics};
use vidgrad::Device;

#[derive(Parser)]
#[command(
    name = "vidgrad",
    version,
    about = "Video classification on a from-scratch engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Math mode of convolution and matmul: fp32, tf32 (operands rounded to TF32, FP32 accumulation) or
    /// bf16 (operands rounded to BF16). Default: VIDGRAD_MATH, else fp32. Both backends run every mode
    /// (CUDA on tensor cores); depthwise convolutions multiply in fp32 in every mode (docs/CUDA.md).
    #[arg(long, global = true)]
    math: Option<String>,
    /// Run every graph node by itself: no fused chains (docs/GRAPH.md, "Fusion"); for debugging and
    /// for comparing fused with unfused results. `summary` and `graph` then mark nothing.
    #[arg(long, global = true)]
    no_fuse: bool,
}

/// Options that choose and shape a model.
#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Model name (see `vidgrad models`).
    #[arg(long)]
    model: String,
    /// Input shape in the model's native layout, comma separated (ECO-Lite: B,T,3,H,W).
    #[arg(long, value_delimiter = ',')]
    input_shape: Vec<usize>,
    /// Number of classes (default: the model's).
    #[arg(long, value_parser = positive)]
    classes: Option<usize>,
    /// Dropout before the classifier (default: the model's).
    #[arg(long, value_parser = finite)]
    dropout: Option<f32>,
    /// Model-specific option KEY=VALUE (repeatable), e.g. `--opt preset=i3d`.
    #[arg(long = "opt", value_parser = parse_key_value)]
    opts: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))
}

impl ModelArgs {
    fn graph(&self) -> Result<vidgrad::graph::Graph> {
        let opts = ModelOptions {
            classes: self.classes,
            dropout: self.dropout,
            extra: self.opts.iter().cloned().collect(),
        };
        models::build(&self.model, &opts, &self.input_shape).with_context(|| {
            format!(
                "building model '{}' for input {:?}",
                self.model, self.input_shape
            )
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// List the model zoo.
    Models,
    /// Train a model (`vidgrad train --model eco-lite --data DIR`; `--data synthetic` is the built-in set).
    Train {
        /// Model name (see `vidgrad models`; with --resume, the run's).
        #[arg(long)]
        model: Option<String>,
        /// Model-specific option KEY=VALUE (repeatable).
        #[arg(long = "opt", value_parser = parse_key_value)]
        opts: Vec<(String, String)>,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Report top-1/top-5, per-class accuracy and the confusion matrix of a checkpoint on a split.
    Eval {
        #[command(flatten)]
        clip: ClipArgs,
        #[command(flatten)]
        data: DataArgs,
        /// Evaluate the training split instead of the validation one.
        #[arg(long)]
        train_split: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the metrics as JSON here too.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print the top-k classes of a video file or frame folder.
    Predict {
        #[command(flatten)]
        clip: ClipArgs,
        /// A video file, a folder of frames, or a dataset folder (every video is predicted).
        path: PathBuf,
        #[arg(long, default_value_t = 5, value_parser = positive)]
        top_k: usize,
        /// Class names (one per line) when the weights are not a vidgrad checkpoint.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Make data problems errors instead of counted warnings (unreadable frames, a video shorter
        /// than the clip or with fewer decodable frames than reported).
        #[arg(long)]
        strict_data: bool,
    },
    /// Grad-CAM of a video: heat-map overlays per frame (PNG), an animated GIF and a contact sheet with
    /// the top-5 (docs/EXPLAIN.md).
    Explain {
        #[command(flatten)]
        clip: ClipArgs,
        /// A video file or a folder of frames (a dataset folder: every video, one sub-folder each).
        path: PathBuf,
        /// Class to explain, by index or name (default: the predicted one).
        #[arg(long)]
        class: Option<String>,
        /// Feature layer, a module or node name (default: the model's last 3D stage).
        #[arg(long)]
        layer: Option<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Side of each frame in the images (default: the crop size, enlarged to at least 160 px;
        /// at most 2048).
        #[arg(long, value_parser = tile_side)]
        tile: Option<usize>,
        /// Class names (one per line) when the weights are not a vidgrad checkpoint.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Make data problems errors instead of counted warnings (unreadable frames, a video shorter
        /// than the clip or with fewer decodable frames than reported).
        #[arg(long)]
        strict_data: bool,
    },
    /// Write the synthetic action set as frame folders (ROOT/<class>/<video>/img_%05d.jpg).
    Dataset {
        #[command(subcommand)]
        what: DatasetCommand,
    },
    /// Print a torchinfo-style summary: layers, shapes, parameters, FLOPs, memory.
    Summary {
        #[command(flatten)]
        model: ModelArgs,
        /// Module depth to expand (torchinfo's `depth`).
        #[arg(long, default_value_t = 3)]
        depth: usize,
    },
    /// Write the network as a Graphviz DOT graph to stdout.
    Graph {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Run a model on the tensor `input` of a safetensors file and write `logits` to another.
    Forward {
        /// Model name (see `vidgrad models`).
        #[arg(long)]
        model: String,
        #[arg(long)]
        classes: Option<usize>,
        #[arg(long)]
        dropout: Option<f32>,
        /// Model-specific option KEY=VALUE (repeatable).
        #[arg(long = "opt", value_parser = parse_key_value)]
        opts: Vec<(String, String)>,
        /// Weights with the original implementation's state_dict names (strict: every key must match).
        #[arg(long)]
        weights: PathBuf,
        /// A safetensors file holding `input` in the model's native layout.
        #[arg(long)]
        input: PathBuf,
        /// Where to write `logits`.
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
        /// eval: running statistics; train: batch statistics (no dropout masks are reproducible).
        #[arg(long, default_value = "eval", value_parser = ["eval", "train"])]
        mode: String,
        #[command(flatten)]
        check: CheckFiniteArg,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// The built-in synthetic action set.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        #[arg(long, default_value_t = 100)]
        videos_per_class: usize,
        #[arg(long, default_value_t = 32)]
        frames: usize,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// A trained model and how clips are cut for it (defaults from the checkpoint's training config).
#[derive(clap::Args, Clone)]
struct ClipArgs {
    /// Model name (default: the checkpoint's).
    #[arg(long)]
    model: Option<String>,
    /// Model-specific option KEY=VALUE (repeatable).
    #[arg(long = "opt", value_parser = parse_key_value)]
    opts: Vec<(String, String)>,
    /// A checkpoint from `vidgrad train`, or a plain state dict with the model's PyTorch names.
    #[arg(long)]
    weights: PathBuf,
    /// Number of classes of plain state-dict weights (a checkpoint knows its own; default: the
    /// --labels file's, else the data's or the model's).
    #[arg(long, value_parser = positive)]
    classes: Option<usize>,
    /// Frames per clip (default: the checkpoint's).
    #[arg(long, value_parser = positive)]
    frames: Option<usize>,
    /// Crop size (default: the checkpoint's).
    #[arg(long, value_parser = frame_side)]
    size: Option<usize>,
    /// Short-side resize (default: the checkpoint's).
    #[arg(long, value_parser = resize_side)]
    resize_short: Option<usize>,
    /// Clips per video.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    clips: usize,
    /// Three crops per clip instead of the centre one.
    #[arg(long)]
    three_crop: bool,
    #[arg(long, default_value_t = 8, value_parser = positive)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    check: CheckFiniteArg,
}

/// `--check-finite`, for the commands that run a model.
#[derive(clap::Args, Clone)]
struct CheckFiniteArg {
    /// Fail at the first layer whose output (or gradient, in training) holds NaN/Inf, naming it
    /// (slow: each check copies the tensor to the host; PyTorch's detect_anomaly).
    #[arg(long)]
    check_finite: bool,
}

impl ClipArgs {
    /// The network with its weights loaded, the test clip spec and the class names (if known).
    fn load(
        &self,
        classes_hint: Option<usize>,
    ) -> Result<(Network, ClipSpec, Option<Vec<String>>)> {
        self.load_named(classes_hint)
            .map(|(net, spec, names, _)| (net, spec, names))
    }

    /// [`ClipArgs::load`], also returning the model's name.
    #[allow(clippy::type_complexity)]
    fn load_named(
        &self,
        classes_hint: Option<usize>,
    ) -> Result<(Network, ClipSpec, Option<Vec<String>>, String)> {
        let device = self.device.get()?;
        let (sd, meta) = checkpoint::load_weights(&self.weights, device)?;
        let cfg = meta
            .as_ref()
            .map(|m| m["config"].clone())
            .unwrap_or_default();
        let model = self
            .model
            .clone()
            .or_else(|| cfg["model"].as_str().map(String::from))
            .context(
                "--model is needed: the weights are not a vidgrad checkpoint that names its model",
            )?;
        let names: Option<Vec<String>> = meta.as_ref().and_then(|m| {
            m["classes"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
        });
        let (mut spec, preprocessing) = checkpoint::inference_clip(
            meta.as_ref(),
            &model,
            self.frames,
            self.size,
            self.resize_short,
        )?;
        spec.clips_per_video = self.clips;
        let mut preprocessing = preprocessing;
        if self.three_crop {
            spec.crop = CropMode::ThreeCrop;
            preprocessing = preprocessing.replace("centre crop", "three crops");
        }
        if self.clips > 1 {
            preprocessing.push_str(&format!(", {} clips per video (--clips)", self.clips));
        }
        eprintln!("{preprocessing}");
        if let (Some(n), Some(c)) = (&names, self.classes) {
            if n.len() != c {
                bail!(
                    "--classes {c}, but {} is a checkpoint of {} classes {n:?}",
                    self.weights.display(),
                    n.len()
                );
            }
        }
        // The classifier's width: the checkpoint's classes, else --classes, else the caller's hint.
        let classes = names
            .as_ref()
            .map(|n| n.len())
            .or(self.classes)
            .or(classes_hint);
        let mut opts = ModelOptions {
            extra: self.opts.iter().cloned().collect(),
            ..Default::default()
        };
        if let Some(extra) = cfg["model_options"].as_object() {
            for (k, v) in extra {
                opts.extra
                    .entry(k.clone())
                    .or_insert_with(|| v.as_str().unwrap_or_default().to_string());
            }
        }
        opts.classes = classes;
        let mut shape = vec![self.batch_size];
        shape.extend(spec.clip_shape());
        let graph = models::build(&model, &opts, &shape)?;
        let mut net = Network::new(graph, device, 0)?;
        net.load_state_dict(&sd, true).with_context(|| {
            let built = match (&names, classes) {
                (Some(_), _) => String::new(),
                (None, c) => format!(
                    " (a plain state dict, without class names: the model was built for {}; if the weights have another number of classes, pass --classes N, or --labels with their class names)",
                    c.map_or("its default number of classes".into(), |c| format!("{c} classes"))
                ),
            };
            format!("loading {}{built}", self.weights.display())
        })?;
        net.eval();
        net.set_check_finite(self.check.check_finite);
        Ok((net, spec, names, model))
    }
}

/// `--device cuda|cpu` (default: CUDA when present, else CPU).
#[derive(clap::Args, Clone)]
struct DeviceArg {
    /// cpu, cuda, cuda:N or cuda-sim (the simulated CUDA device, for testing; docs/CUDA-SIM.md). Default:
    /// cuda when a GPU and the kernels are present, else cpu.
    #[arg(long)]
    device: Option<String>,
}

impl DeviceArg {
    fn get(&self) -> Result<Device> {
        match &self.device {
            None => Ok(Device::best()),
            Some(s) => {
                let d = Device::parse(s)?;
                d.backend().with_context(|| format!("--device {s}"))?;
                Ok(d)
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    vidgrad::error::exit_code(run())
}

fn run() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Chosen (and an invalid VIDGRAD_MATH reported) before anything runs.
    match &cli.math {
        Some(m) => vidgrad::math_mode::set_math_mode(vidgrad::math_mode::MathMode::parse(m)?),
        None => {
            vidgrad::math_mode::chosen_math_mode()?;
        }
    }
    vidgrad::exec::set_fuse_by_default(!cli.no_fuse);
    match cli.command {
        Command::Models => {
            for (name, source) in models::MODELS {
                println!("{name:<14} {source}");
            }
        }
        Command::Train {
            model,
            opts,
            mut train,
        } => {
            if let Some((_, m)) = matches.subcommand() {
                train.note_given_flags(m);
            }
            let defaults = Defaults::for_device(train.device()?);
            let cfg = train.config(model.as_deref(), true, opts, &defaults)?;
            train.run(&cfg)?;
        }
        Command::Eval {
            clip,
            data,
            train_split,
            seed,
            json,
        } => {
            // The synthetic set is rendered at the size the checkpoint was trained on unless told.
            let meta = checkpoint::read_meta(&clip.weights)?.unwrap_or_default();
            let frame = clip
                .resize_short
                .filter(|&v| v > 0)
                .or(clip.size)
                .or(meta["transform"]["resize_short"]
                    .as_u64()
                    .map(|v| v as usize)
                    .filter(|&v| v > 0))
                .or(meta["config"]["resize_short"]
                    .as_u64()
                    .map(|v| v as usize)
                    .filter(|&v| v > 0))
                .or(meta["config"]["size"].as_u64().map(|v| v as usize))
                .unwrap_or(224);
            let (train, val) = data.load(seed, frame)?;
            let ds = if train_split { train } else { val };
            let (mut net, spec, names) = clip.load(Some(ds.classes().len()))?;
            // before any clip is loaded: batches too large for this machine are an error, not an abort
            net.check_memory(false)?;
            // The data's labels are mapped to the model's classes by name (their orders may differ:
            // folder names sorted vs a labels file); weights without names take the data's order.
            let (names, label_map) = match names {
                Some(model_names) => {
                    let map = vidgrad::data::match_class_names(&model_names, ds.classes())
                        .map_err(|why| {
                            anyhow::anyhow!(
                                "the classes of {} do not match those of {}: {why}",
                                data.data,
                                clip.weights.display()
                            )
                        })?;
                    (model_names, map)
                }
                None => (ds.classes().to_vec(), (0..ds.classes().len()).collect()),
            };
            let loader = Loader::new(ds.clone(), spec, clip.batch_size, false, seed, 2, 4);
            let warnings_before = ds.warning_count();
            let m = vidgrad::train::evaluate(&mut net, &loader, &label_map, true)?;
            let data_warnings = ds.warning_count() - warnings_before;
            print!("{}", m.report(&names));
            vidgrad::data::print_new_warnings(&ds, "");
            if let Some(path) = json {
                let mut j = m.to_json(&names);
                j["data_warnings"] = data_warnings.into();
                vidgrad::io::write_atomic(&path, j.to_string().as_bytes())?;
            }
        }
        Command::Predict {
            clip,
            path,
            top_k,
            labels,
            strict_data,
        } => {
            let ds = Arc::new(Dataset::open(&path, &strict(strict_data))?);
            vidgrad::data::print_new_warnings(&ds, "");
            let label_names = labels
                .as_deref()
                .map(vidgrad::data::read_labels_csv)
                .transpose()?;
            let hint = label_names.as_ref().map(|n| n.len());
            let (net, spec, names) = clip.load(hint)?;
            let names = class_names(names, label_names, labels.as_deref())?;
            let views = spec.views();
            // before any clip is loaded (a clip too large is an error, not an abort); every view of
            // a video goes through the network at once
            net.check_memory_for_batch(false, views)?;
            for v in 0..ds.len() {
                let data = vidgrad::data::load_clip(&ds, v, &spec, 0)?;
                let mut shape = vec![views];
                shape.extend(spec.clip_shape());
                let x = vidgrad::Tensor::from_vec(data, &shape, net.device())?;
                let logits = vidgrad::no_grad(|| net.forward(&[&x]))?.to_vec()?;
                let c = logits.len() / views;
                metrics::check_logits(&logits, c, |r| {
                    format!("'{}' (view {r} of {views})", ds.name(v))
                })?;
                let mut p = vec![0f32; c];
                for row in logits.chunks(c) {
                    metrics::softmax(row)
                        .iter()
                        .zip(p.iter_mut())
                        .for_each(|(a, b)| *b += a / views as f32);
                }
                println!("{}", ds.name(v));
                for k in metrics::top_k(&p, top_k) {
                    let name = names
                        .as_ref()
                        .and_then(|n| n.get(k).cloned())
                        .unwrap_or_else(|| format!("class {k}"));
                    println!("  {:6.2}%  {name}", 100.0 * p[k]);
                }
                // after each video, so that a problem is seen next to the prediction it affects
                vidgrad::data::print_new_warnings(&ds, "");
            }
        }
        Command::Explain {
            clip,
            path,
            class,
            layer,
            out,
            tile,
            labels,
            strict_data,
        } => {
            let ds = Arc::new(Dataset::open(&path, &strict(strict_data))?);
            vidgrad::data::print_new_warnings(&ds, "");
            let label_names = labels
                .as_deref()
                .map(vidgrad::data::read_labels_csv)
                .transpose()?;
            let (net, mut spec, names, model) =
                clip.load_named(label_names.as_ref().map(|n| n.len()))?;
            let names = class_names(names, label_names, labels.as_deref())?;
            // before any clip is loaded: one clip at a time
            net.check_memory_for_batch(false, 1)?;
            spec.clips_per_video = 1;
            spec.crop = CropMode::Center;
            let layer = match layer {
                Some(l) => l,
                None => vidgrad::explain::default_layer(&model)?.to_string(),
            };
            let class = class
                .map(|c| {
                    c.parse::<usize>()
                        .ok()
                        .or_else(|| names.as_ref()?.iter().position(|n| *n == c))
                        .with_context(|| {
                            format!(
                                "--class {c}: not a class index or one of the model's class names"
                            )
                        })
                })
                .transpose()?;
            for v in 0..ds.len() {
                let data = vidgrad::data::load_clip(&ds, v, &spec, 0)?;
                let mut shape = vec![1];
                shape.extend(spec.clip_shape());
                let x = vidgrad::Tensor::from_vec(data.clone(), &shape, net.device())?;
                if clip.check.check_finite {
                    // Grad-CAM runs its own executor: the checked forward is one extra pass.
                    vidgrad::no_grad(|| net.forward(&[&x]))?;
                }
                let cam = vidgrad::explain::grad_cam(&net, &x, spec.layout, &layer, class)?;
                let dir = if ds.len() == 1 {
                    out.clone()
                } else {
                    out.join(ds.name(v))
                };
                let mut opts = vidgrad::explain::render::RenderOptions::new(spec.norm, spec.layout);
                opts.class_names = names.clone();
                // a single video: its last two path components (class folder and video)
                let shown = match ds.path(v).filter(|_| ds.len() == 1) {
                    Some(p) => p
                        .iter()
                        .rev()
                        .take(2)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .map(|c| c.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                    None => ds.name(v).to_string(),
                };
                opts.title = format!("{shown} · {model}");
                opts.tile = tile;
                // No heat map or "NaN%" for a score that is not finite.
                metrics::check_logits(&cam.logits, cam.logits.len(), |_| {
                    format!("'{}'", ds.name(v))
                })?;
                let p = cam.probabilities();
                let w = vidgrad::explain::render::write_all(&dir, &data, &cam, &opts)?;
                let name = |k: usize| {
                    names
                        .as_ref()
                        .and_then(|n| n.get(k).cloned())
                        .unwrap_or_else(|| format!("class {k}"))
                };
                println!(
                    "{}: Grad-CAM of \"{}\" ({:.2}%) at {layer} {:?}",
                    ds.name(v),
                    name(cam.class),
                    100.0 * p[cam.class],
                    cam.feature_shape
                );
                for k in metrics::top_k(&p, 5) {
                    println!("  {:6.2}%  {}", 100.0 * p[k], name(k));
                }
                println!(
                    "  wrote {} frames, {}, {}",
                    w.frames.len(),
                    w.gif.display(),
                    w.contact_sheet.display()
                );
                vidgrad::data::print_new_warnings(&ds, "");
            }
        }
        Command::Dataset {
            what:
                DatasetCommand::Synth {
                    out,
                    classes,
                    videos_per_class,
                    frames,
                    size,
                    seed,
                },
        } => {
            let cfg = SynthConfig {
                classes,
                videos_per_class,
                frames,
                size,
                seed,
            };
            vidgrad::data::write_synthetic(&cfg, &out)?;
            eprintln!(
                "wrote {} videos of {classes} classes to {}",
                classes * videos_per_class,
                out.display()
            );
        }
        Command::Summary { model, depth } => {
            print!("{}", model.graph()?.summary(depth));
            match vidgrad::math_mode::chosen_math_mode()? {
                Some(m) => println!("Math mode: {m} (convolution and matmul operands)"),
                None => println!(
                    "Math mode: the defaults, tf32 on CUDA and fp32 on the CPU (convolution and matmul \
                     operands; --math or VIDGRAD_MATH chooses one)"
                ),
            }
        }
        Command::Graph { model } => print!("{}", model.graph()?.to_dot()),
        Command::Forward {
            model,
            classes,
            dropout,
            opts,
            weights,
            input,
            output,
            device,
            mode,
            check,
        } => {
            let device = device.get()?;
            let (inputs, _) = vidgrad::io::load_safetensors(&input, device)?;
            let x = inputs.get("input").with_context(|| {
                format!(
                    "{}: no tensor named 'input' (found: {:?})",
                    input.display(),
                    inputs.keys().collect::<Vec<_>>()
                )
            })?;
            let args = ModelArgs {
                model,
                input_shape: x.shape().to_vec(),
                classes,
                dropout,
                opts,
            };
            let mut net = Network::new(args.graph()?, device, 0)?;
            let (sd, _) = vidgrad::io::load_safetensors(&weights, device)?;
            net.load_state_dict(&sd, true)
                .with_context(|| format!("loading {}", weights.display()))?;
            if mode == "eval" {
                net.eval();
            }
            net.set_check_finite(check.check_finite);
            let logits = vidgrad::no_grad(|| net.forward(&[x]))?;
            // The logits are written as computed (NaN in, NaN out, as PyTorch), but not silently.
            let v = logits.to_vec()?;
            let bad = v.iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                eprintln!(
                    "warning: {bad} of the {} logits are not finite (--check-finite names the first layer that produces them)",
                    v.len()
                );
            }
            let out: vidgrad::io::StateDict =
                [("logits".to_string(), logits)].into_iter().collect();
            vidgrad::io::save_safetensors(&output, &out, None)?;
            eprintln!(
                "wrote logits {:?} to {}",
                out["logits"].shape(),
                output.display()
            );
        }
    }
    Ok(())
}

/// clap value parser of `explain --tile`: 1..=2048 pixels (the images hold frames × tile² pixels).
fn tile_side(s: &str) -> std::result::Result<usize, String> {
    let v = positive(s)?;
    if v > vidgrad::explain::render::MAX_TILE {
        return Err(format!(
            "at most {} pixels",
            vidgrad::explain::render::MAX_TILE
        ));
    }
    Ok(v)
}

/// How `predict` and `explain` open their path: lenient, or `--strict-data`.
fn strict(strict_data: bool) -> FolderOptions {
    FolderOptions {
        strict: strict_data,
        ..FolderOptions::default()
    }
}

/// The class names to print: the checkpoint's, else the `--labels` file's; a labels file that names
/// other classes than the checkpoint is an error naming both.
fn class_names(
    checkpoint: Option<Vec<String>>,
    labels: Option<Vec<String>>,
    labels_path: Option<&std::path::Path>,
) -> Result<Option<Vec<String>>> {
    match (checkpoint, labels) {
        (Some(c), Some(l)) if c != l => bail!(
            "--labels {}: its classes {l:?} differ from the checkpoint's {c:?} (the checkpoint's own names are used without --labels)",
            labels_path.map(|p| p.display().to_string()).unwrap_or_default()
        ),
        (c, l) => Ok(c.or(l)),
    }
}
