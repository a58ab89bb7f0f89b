//! The `vidgrad` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use vidgrad::models::{self, ModelOptions};

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
    }
    Ok(())
}
