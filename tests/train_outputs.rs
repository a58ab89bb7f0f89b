//! Training outputs are never lost or mixed (docs/TRAINING-OUTPUTS.md): `vidgrad train` killed with
//! SIGKILL at many instants (inside checkpoint writes too) and resumed each time ends with the weights
//! of an uninterrupted run; one live run per folder; an earlier run is neither replaced without
//! `--overwrite` nor continued without a checkpoint; `--resume` keeps the stored settings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vidgrad::io::load_safetensors;
use vidgrad::train::checkpoint;
use vidgrad::train::run_dir::RUN_FILES;
use vidgrad::Device;

use common::{run_vidgrad, step_losses, tiny_train_args, vidgrad_command};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vidgrad-outputs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `vidgrad` with `args`, its atomic writes slowed by `pause_ms` so that kills land inside them.
fn spawn(args: &[String], pause_ms: u64) -> Child {
    vidgrad_command()
        .args(args)
        .env("VIDGRAD_TEST_WRITE_PAUSE_MS", pause_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr_of(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Every tensor of a safetensors file (weights and optimiser state), as bits.
fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let (sd, _) = load_safetensors(path, Device::Cpu).unwrap();
    sd.into_iter()
        .map(|(k, t)| (k, t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect()))
        .collect()
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Return once `child` has a checkpoint's temporary file in `dir` (or has ended).
fn wait_for_checkpoint_write(dir: &Path, child: &mut Child) {
    let mine = format!(".tmp-{}-", child.id());
    let writing = || {
        temporaries(dir)
            .iter()
            .any(|t| (t.starts_with(".last.") || t.starts_with(".best.")) && t.contains(&mine))
    };
    while !writing() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a killed run left must be usable: a `last` that loads, and the `best` it records.
fn check_after_kill(dir: &Path) {
    let last = dir.join("last.safetensors");
    if !last.exists() {
        return;
    }
    let ck = checkpoint::load(&last, Device::Cpu).expect("last.safetensors after a kill");
    if ck.meta["best_top1"].as_f64().is_some_and(f64::is_finite) {
        checkpoint::load(&dir.join("best.safetensors"), Device::Cpu)
            .expect("the best.safetensors that last.safetensors records");
    }
}

#[test]
fn sigkill_at_many_instants_then_resume_matches_an_uninterrupted_run() {
    const EPOCHS: usize = 4;
    const KILLS: usize = 24;
    const PAUSE_MS: u64 = 25;
    let straight = tmp("straight");
    let t0 = Instant::now();
    let (ok, err) = stderr_of(spawn(&tiny_train_args(&straight, EPOCHS), PAUSE_MS));
    assert!(ok, "{err}");
    let run_ms = t0.elapsed().as_millis() as u64;

    let killed = tmp("killed");
    let resume_args: Vec<String> = ["train", "--resume", "--quiet", "--out"]
        .map(String::from)
        .into_iter()
        .chain([killed.to_str().unwrap().to_string()])
        .collect();
    let (mut kills, mut inside_writes, mut starts, mut kills_in_chain) = (0, 0, 0u64, 0);
    loop {
        // a new run while nothing is saved yet (replacing what a killed one left), else a resume
        // that names nothing but the folder: the settings come from the checkpoint
        let args = if killed.join("last.safetensors").exists() {
            resume_args.clone()
        } else {
            let mut a = tiny_train_args(&killed, EPOCHS);
            a.push("--overwrite".into());
            a
        };
        starts += 1;
        let mut child = spawn(&args, PAUSE_MS);
        // Done once enough kills landed and the run being finished has itself been killed (and resumed)
        // several times: a run that ended before its kill started the chain over, so on a loaded
        // machine more kills may be needed (bounded, so that the test cannot spin).
        assert!(
            kills < 4 * KILLS,
            "{kills} kills and still no run killed 5 times in a row: runs keep ending before the kill"
        );
        if kills >= KILLS && kills_in_chain >= 5 {
            let (ok, err) = stderr_of(child);
            assert!(ok, "the last resume failed: {err}");
            break;
        }
        // an instant within what is left of the run (an epoch-sized part per epoch to go)
        let done = checkpoint::read_meta(&killed.join("last.safetensors"))
            .ok()
            .flatten()
            .map_or(0, |m| m["epoch"].as_u64().unwrap() as usize + 1);
        let left_ms = run_ms * (EPOCHS - done) as u64 / EPOCHS as u64;
        if kills % 3 == 0 {
            // inside a checkpoint write: once its temporary file appears, 0–49 ms on (the write pauses
            // twice for PAUSE_MS: half-written, and written but not yet renamed)
            wait_for_checkpoint_write(&killed, &mut child);
            std::thread::sleep(Duration::from_millis((kills as u64 * 13) % 50));
        } else {
            let delay = 30 + (kills as u64 * 7919 + starts * 104729) % left_ms.max(1);
            std::thread::sleep(Duration::from_millis(delay));
        }
        if child.try_wait().unwrap().is_some() {
            // finished before the kill: start over, to keep killing
            let (ok, err) = stderr_of(child);
            assert!(ok, "{err}");
            std::fs::remove_dir_all(&killed).unwrap();
            kills_in_chain = 0;
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        kills_in_chain += 1;
        if !temporaries(&killed).is_empty() {
            inside_writes += 1;
        }
        check_after_kill(&killed);
    }
    println!(
        "{kills} kills ({inside_writes} inside a write, {kills_in_chain} in the final run's history), {starts} starts, uninterrupted run {run_ms} ms"
    );
    assert!(
        inside_writes >= KILLS / 4,
        "only {inside_writes} kills landed inside a write"
    );
    assert!(
        temporaries(&killed).is_empty(),
        "{:?}",
        temporaries(&killed)
    );
    for f in RUN_FILES {
        assert!(killed.join(f).exists(), "{f} missing");
    }
    for f in ["last.safetensors", "best.safetensors"] {
        assert!(
            tensors(&straight.join(f)) == tensors(&killed.join(f)),
            "{f} differs from the uninterrupted run's"
        );
    }
    assert_eq!(step_losses(&straight), step_losses(&killed));
    std::fs::remove_dir_all(&straight).ok();
    std::fs::remove_dir_all(&killed).ok();
}

#[test]
fn a_second_run_into_a_live_runs_folder_fails_naming_its_process() {
    let dir = tmp("lock");
    // slow writes keep the first run alive while the second starts
    let mut first = spawn(&tiny_train_args(&dir, 2), 2000);
    let pid = first.id().to_string();
    let lock = dir.join("train.lock");
    let t0 = Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != pid {
        assert!(t0.elapsed() < Duration::from_secs(20), "no lock taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = tiny_train_args(&dir, 2);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = run_vidgrad(&args);
        assert!(!ok, "a second run started");
        assert!(
            err.contains("in use by another training run") && err.contains(&pid),
            "{err}"
        );
    }
    let (ok, _, err) = run_vidgrad(&["train", "--resume", "--out", dir.to_str().unwrap()]);
    assert!(!ok && err.contains(&pid), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_earlier_run_needs_resume_or_overwrite() {
    let dir = tmp("earlier");
    let run = |extra: &[&str]| {
        let mut args = tiny_train_args(&dir, 1);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_vidgrad(&args)
    };
    let (ok, _, err) = run(&[]);
    assert!(ok, "{err}");
    // what the run claims to have written exists
    assert!(
        err.contains(
            "last.safetensors, best.safetensors, metrics.jsonl, loss.png, accuracy.png in"
        ),
        "{err}"
    );
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    let (ok, _, err) = run(&[]);
    assert!(!ok && err.contains("holds an earlier run"), "{err}");
    assert!(
        err.contains("--overwrite") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);

    // --overwrite starts afresh: the metrics hold this run's lines only
    let lines = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let n = lines(&dir);
    let (ok, _, err) = run(&["--overwrite", "--seed", "3"]);
    assert!(ok, "{err}");
    assert_eq!(lines(&dir), n);
    assert_ne!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);
    let (ok, _, err) = run(&["--overwrite", "--resume"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_without_a_checkpoint_is_an_error_and_keeps_the_metrics() {
    let dir = tmp("nothing");
    let out = dir.to_str().unwrap().to_string();
    let (ok, _, err) = run_vidgrad(&["train", "--resume", "--out", &out]);
    assert!(!ok && err.contains("no last.safetensors"), "{err}");
    assert!(!dir.exists(), "--resume created {out}");

    // a run killed while writing its first checkpoint: metrics and a temporary file, no `last`
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = "{\"kind\":\"step\",\"epoch\":0,\"step\":0,\"loss\":2.3,\"lr\":0.01}\n";
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(dir.join(".last.safetensors.tmp-999999-0"), b"half").unwrap();
    let mut args = tiny_train_args(&dir, 1);
    args.push("--resume".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run_vidgrad(&args);
    assert!(!ok, "resumed from nothing");
    assert!(
        err.contains(".last.safetensors.tmp-999999-0")
            && err.contains("no last.safetensors")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert!(temporaries(&dir).is_empty(), "stale temporary file kept");
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        metrics
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_checks_the_best_checkpoint_it_records() {
    let dir = tmp("best");
    let args = tiny_train_args(&dir, 1);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run_vidgrad(&args);
    assert!(ok, "{err}");
    std::fs::remove_file(dir.join("best.safetensors")).unwrap();
    let (ok, _, err) = run_vidgrad(&["train", "--resume", "--out", dir.to_str().unwrap()]);
    assert!(!ok, "resumed without its best checkpoint");
    assert!(
        err.contains("best.safetensors") && err.contains("is missing"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_keeps_the_stored_settings_and_refuses_conflicting_flags() {
    let dir = tmp("settings");
    let out = dir.to_str().unwrap().to_string();
    let mut args = tiny_train_args(&dir, 1);
    args.extend(["--lr", "0.02", "--seed", "5"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run_vidgrad(&args);
    assert!(ok, "{err}");
    for (flag, value, stored) in [
        ("--lr", "0.5", "0.02"),
        ("--frames", "8", "4"),
        ("--model", "eco-lite", "ct-sep"),
        ("--batch-size", "2", "4"),
        ("--data", "elsewhere", "synthetic"),
        ("--epochs", "9", "1"),
    ] {
        let (ok, _, err) = run_vidgrad(&["train", "--resume", "--out", &out, flag, value]);
        assert!(!ok, "{flag} {value} accepted");
        assert!(
            err.contains(&format!("{flag} {value} conflicts with {stored}")),
            "{err}"
        );
    }
    let (ok, _, err) = run_vidgrad(&[
        "train",
        "--resume",
        "--out",
        &out,
        "--opt",
        "layers=2,2,2,2",
    ]);
    assert!(
        !ok && err.contains("--opt layers=2,2,2,2 conflicts with layers=1,1,1,1"),
        "{err}"
    );
    // the same values given again are no conflict; the run had finished its epoch
    let (ok, _, err) = run_vidgrad(&[
        "train", "--resume", "--out", &out, "--lr", "0.02", "--frames", "4", "--model", "ct-sep",
    ]);
    assert!(ok && err.contains("already finished its 1 epochs"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn epochs_0_claims_no_files() {
    let dir = tmp("zero");
    let args = tiny_train_args(&dir, 0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run_vidgrad(&args);
    assert!(ok, "{err}");
    assert!(err.contains("nothing to train, no files written"), "{err}");
    assert!(!err.contains("safetensors"), "{err}");
    assert!(!dir.join("last.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}
