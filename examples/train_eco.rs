//! Train ECO-Lite: `cargo run --release --example train_eco [-- OPTIONS]`.
//!
//! With no arguments it trains on the built-in synthetic action set: on a GPU at the paper's size
//! (16 frames × 224², batch 16); on the CPU with a reduced preset (8 frames × 64², batch 8) that runs in
//! minutes on two cores. Every `vidgrad train` option works here too (`-- --help` lists them), e.g.
//! `-- --data kinetics_videos --frames 16 --size 224 --epochs 30`.

use clap::{CommandFactory, FromArgMatches, Parser};
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

fn main() -> std::process::ExitCode {
    vidgrad::error::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let mut args = Cli::from_arg_matches(&matches)?.train;
    args.note_given_flags(&matches);
    let device = args.device()?;
    let defaults = if matches!(device, Device::Cuda(_)) {
        // the paper's recipe
        Defaults {
            epochs: 20,
            batch_size: 16,
            warmup_epochs: 1.0,
            ..Defaults::gpu()
        }
    } else {
        Defaults::cpu()
    };
    if args.out == std::path::Path::new("runs/train") {
        args.out = "runs/train_eco".into();
    }
    let cfg = args.config(Some("eco-lite"), false, vec![], &defaults)?;
    args.run(&cfg)?;
    Ok(())
}
