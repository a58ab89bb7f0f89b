//! Train ECO-Lite: `cargo run --release --example train_eco [-- OPTIONS]`.
//!
//! With no arguments it trains on the built-in synthetic action set: on a GPU at the paper's size
//! (16 frames × 224², batch 16); on the CPU with a reduced preset (8 frames × 64², batch 8) that runs in
//! minutes on two cores. Every `vidgrad train` option works here too (`-- --help` lists them), e.g.
//! `-- --data kinetics_videos --frames 16 --size 224 --epochs 30`.

use clap::Parser;
use vidgrad::train::args::{Defaults, TrainArgs};
use vidgrad::Device;

#[derive(Parser)]
#[command(
    about = "Train ECO-Lite (defaults: the synthetic action set; full size on a GPU, reduced on the CPU)"
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device = cli.train.device()?;
    let defaults = if matches!(device, Device::Cuda(_)) {
        Defaults {
            frames: 16,
            size: 224,
            resize_short: 256,
            epochs: 20,
            batch_size: 16,
            lr: 0.01,
            weight_decay: 5e-4,
            warmup_epochs: 1.0,
        }
    } else {
        // The CPU preset: small clips so that an epoch of the synthetic set takes about a minute on
        // two cores (README gives the measured time and accuracy).
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
    };
    let mut args = cli.train;
    if args.out == std::path::Path::new("runs/train") {
        args.out = "runs/train_eco".into();
    }
    let cfg = args.config("eco-lite", vec![], &defaults)?;
    args.run(&cfg)?;
    Ok(())
}
