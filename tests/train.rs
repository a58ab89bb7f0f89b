//! Training end to end on the synthetic set with a tiny ECO-Lite: checkpoints and metrics are written,
//! a resumed run continues bit-identically on the CPU, a non-finite loss stops training with an error
//! naming the step and leaves the last good checkpoint intact, `evaluate` and checkpoint loading agree.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::step_losses;
use vidgrad::data::{Dataset, SynthConfig};
use vidgrad::train::{self, checkpoint, TrainConfig};
use vidgrad::Device;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vidgrad-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn data() -> (Arc<Dataset>, Arc<Dataset>) {
    let ds = Dataset::synthetic(&SynthConfig {
        classes: 10,
        videos_per_class: 3,
        frames: 8,
        size: 32,
        seed: 1,
    });
    let (t, v) = ds.split(0.34, 1);
    (Arc::new(t), Arc::new(v))
}

fn config(out: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::new("eco-lite", Device::Cpu, out).unwrap();
    cfg.clip.segments = 4;
    cfg.clip.size = 32;
    cfg.clip.resize_short = 0;
    cfg.epochs = 3;
    cfg.batch_size = 4;
    cfg.lr = 0.01;
    cfg.model_opts.dropout = Some(0.3); // exercises the dropout RNG state across the resume
    cfg.warmup_epochs = 0.5;
    cfg.progress = false;
    cfg.workers = 2;
    cfg
}

#[test]
fn resume_continues_bit_identically() {
    let (train_ds, val_ds) = data();
    let a = tmp("straight");
    let s = train::fit(&config(&a), train_ds.clone(), val_ds.clone()).unwrap();
    assert_eq!(s.epochs_run, 3);
    for f in [
        "last.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "loss.png",
        "accuracy.png",
    ] {
        assert!(a.join(f).exists(), "{f} not written");
    }

    let b = tmp("resumed");
    let mut cfg = config(&b);
    cfg.stop_after_epochs = Some(1);
    train::fit(&cfg, train_ds.clone(), val_ds.clone()).unwrap();
    cfg.stop_after_epochs = None;
    cfg.resume = true;
    let s2 = train::fit(&cfg, train_ds, val_ds).unwrap();
    assert_eq!(s2.epochs_run, 2, "resumed after epoch 1");
    let (la, lb) = (step_losses(&a), step_losses(&b));
    assert_eq!(la.len(), lb.len());
    assert_eq!(
        la, lb,
        "the resumed loss curve differs from the uninterrupted one"
    );
    // and so do the final weights
    let wa = checkpoint::load(&a.join("last.safetensors"), Device::Cpu)
        .unwrap()
        .weights;
    let wb = checkpoint::load(&b.join("last.safetensors"), Device::Cpu)
        .unwrap()
        .weights;
    for (k, t) in &wa {
        assert_eq!(t.to_vec().unwrap(), wb[k].to_vec().unwrap(), "{k}");
    }
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let (train_ds, val_ds) = data();
    let dir = tmp("nan");
    let mut cfg = config(&dir);
    cfg.stop_after_epochs = Some(1);
    train::fit(&cfg, train_ds.clone(), val_ds.clone()).unwrap();
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    cfg.stop_after_epochs = None;
    cfg.resume = true;
    cfg.lr = 1e30; // diverges at once
    let err = train::fit(&cfg, train_ds, val_ds).unwrap_err().to_string();
    println!("{err}");
    assert!(
        err.contains("loss is") && err.contains("step") && err.contains("last.safetensors"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("last.safetensors")).unwrap(),
        before,
        "checkpoint changed"
    );
    checkpoint::load(&dir.join("last.safetensors"), Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configurations_are_clear_errors() {
    let (train_ds, val_ds) = data();
    let dir = tmp("bad");
    let mut cfg = config(&dir);
    cfg.model_opts.classes = Some(7);
    let err = train::fit(&cfg, train_ds.clone(), val_ds.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--classes 7") && err.contains("10 classes"),
        "{err}"
    );
    let mut cfg = config(&dir);
    cfg.clip.segments = 6;
    let err = train::fit(&cfg, train_ds, val_ds).unwrap_err().to_string();
    assert!(err.contains("multiple of 4"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
