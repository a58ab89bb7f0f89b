//! The `vidgrad` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use std::path::PathBuf;

use vidgrad::exec::Network;
use vidgrad::models::{self, ModelOptions};
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
    #[arg(long)]
    classes: Option<usize>,
    /// Dropout before the classifier (default: the model's).
    #[arg(long)]
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
    },
}

/// `--device cuda|cpu` (default: CUDA when present, else CPU).
#[derive(clap::Args, Clone)]
struct DeviceArg {
    /// cpu, cuda or cuda:N (default: cuda when a GPU and the kernels are present, else cpu).
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Models => {
            for (name, source) in models::MODELS {
                println!("{name:<14} {source}");
            }
        }
        Command::Summary { model, depth } => print!("{}", model.graph()?.summary(depth)),
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
            let logits = vidgrad::no_grad(|| net.forward(&[x]))?;
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
