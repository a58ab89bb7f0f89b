//! Bad input through the `vidgrad` command line: each case gets a clear error naming what and where
//! (or a counted warning) and never a panic, a backtrace or a plausible wrong answer. The table in
//! [`bad_inputs_get_clear_messages`] is meant to grow: add a row per bad input.
//!
//! Also here: `eval` and `predict` match the data's classes to the checkpoint's by name.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vidgrad::io::save_safetensors;
use vidgrad::train::checkpoint;
use vidgrad::Device;

use common::{have_ffmpeg, run_vidgrad_env as run, tiny_train_args};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vidgrad-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Files shared by the cases: a tiny trained checkpoint, its data as frame folders (with a
/// `labels.csv` whose order is not the folders' sorted order), a plain state dict of its weights and
/// a checkpoint whose metadata is corrupt.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn get() -> &'static Files {
        static FILES: OnceLock<Files> = OnceLock::new();
        FILES.get_or_init(|| {
            let dir = tmp("files");
            let s = |p: PathBuf| p.to_str().unwrap().to_string();
            let data = s(dir.join("data"));
            let (ok, _, err) = run(
                &[
                    "dataset",
                    "synth",
                    "--out",
                    &data,
                    "--classes",
                    "10",
                    "--videos-per-class",
                    "3",
                    "--frames",
                    "8",
                    "--size",
                    "32",
                ],
                &[],
            );
            assert!(ok, "{err}");
            let mut train = tiny_train_args(&dir.join("run"), 2);
            train.extend(["--data", &data, "--lr", "0.05"].map(String::from));
            let train: Vec<&str> = train.iter().map(String::as_str).collect();
            let (ok, _, err) = run(&train, &[]);
            assert!(ok, "{err}");
            let ck = dir.join("run/last.safetensors");
            let (weights, _) = checkpoint::load_weights(&ck, Device::Cpu).unwrap();
            save_safetensors(dir.join("plain.safetensors"), &weights, None).unwrap();
            let corrupt: BTreeMap<String, String> =
                [("vidgrad_checkpoint".to_string(), "{\"model\": ".to_string())].into();
            save_safetensors(dir.join("corrupt.safetensors"), &weights, Some(&corrupt)).unwrap();
            // found by tests/fuzz.rs: a label this large made the class list allocate without bound
            std::fs::write(
                dir.join("huge-label.txt"),
                "move_left/v_0000 8 187529126381688\n",
            )
            .unwrap();
            Files { dir }
        })
    }

    /// A path under the shared folder; `{ck}`, `{plain}`, `{corrupt}`, `{data}`, `{video}` and `{dir}`
    /// in a case's arguments stand for these.
    fn expand(&self, arg: &str) -> String {
        let d = &self.dir;
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        arg.replace("{ck}", &s(d.join("run/last.safetensors")))
            .replace("{plain}", &s(d.join("plain.safetensors")))
            .replace("{corrupt}", &s(d.join("corrupt.safetensors")))
            .replace("{data}", &s(d.join("data")))
            .replace("{video}", &s(d.join("data/move_left/v_0000")))
            .replace("{dir}", &s(d.to_path_buf()))
    }
}

/// One bad input: the command, its environment, whether it still succeeds (a warning) and the
/// fragments its stderr must hold.
struct Case {
    args: &'static str,
    env: &'static [(&'static str, &'static str)],
    succeeds: bool,
    says: &'static [&'static str],
}

const fn fails(args: &'static str, says: &'static [&'static str]) -> Case {
    Case {
        args,
        env: &[],
        succeeds: false,
        says,
    }
}

const CASES: &[Case] = &[
    // flags out of their domain name the flag
    fails(
        "train --model ct-sep --batch-size 0",
        &["'--batch-size <BATCH_SIZE>'", "at least 1"],
    ),
    fails("train --model ct-sep --lr inf", &["'--lr <LR>'", "must be finite"]),
    fails("train --model ct-sep --lr NaN", &["--lr", "must be finite"]),
    fails("train --model ct-sep --frames 0", &["--frames", "at least 1"]),
    fails(
        "eval --weights {ck} --data {data} --clips 0",
        &["'--clips <CLIPS>'", "at least 1"],
    ),
    fails(
        "predict --weights {ck} {video} --top-k 0",
        &["'--top-k <TOP_K>'", "at least 1"],
    ),
    fails(
        "predict --weights {ck} {video} --resize-short 100000",
        &["--resize-short", "100000", "at most 8192"],
    ),
    // weights that do not fit
    fails(
        "predict --weights {plain} {video} --model ct-sep --opt layers=1,1,1,1",
        &["plain state dict", "--classes", "--labels", "fc.weight"],
    ),
    fails(
        "predict --weights {corrupt} {video}",
        &["corrupt.safetensors", "training metadata is corrupt"],
    ),
    fails(
        "eval --weights {corrupt} --data {data}",
        &["corrupt.safetensors", "training metadata is corrupt"],
    ),
    // a user error under RUST_BACKTRACE=1 is one line, not a crash report
    Case {
        args: "train --model nope --device cpu --out {dir}/nope",
        env: &[("RUST_BACKTRACE", "1")],
        succeeds: false,
        says: &["error: models: unknown model 'nope'"],
    },
    // out-of-range synthetic options are clamped, with a warning
    Case {
        args: "train --model ct-sep --synth-classes 20 --synth-videos 2 --frames 4 --size 32 --epochs 0 --device cpu --out {dir}/synth20",
        env: &[],
        succeeds: true,
        says: &["warning:", "synthetic options out of range (clamped)", "classes 20 → 12"],
    },
    // the CPU preset says what it chose (real videos are resized first)
    Case {
        args: "train --model ct-sep --data {data} --epochs 0 --device cpu --out {dir}/preset",
        env: &[],
        succeeds: true,
        says: &["CPU preset's --frames 8, --size 64, --resize-short 73, --batch-size 8", "--epochs 0: nothing to train"],
    },
    // a training batch of one clip: the flag to change
    Case {
        args: "train --model ct-sep --opt layers=1,1,1,1 --synth-videos 3 --synth-frames 8 --frames 4 --size 16 --val-ratio 0.34 --batch-size 19 --epochs 1 --drop-last false --device cpu --quiet --out {dir}/one-clip",
        env: &[],
        succeeds: false,
        says: &["a training batch of one clip", "--drop-last", "--batch-size 19"],
    },
    Case {
        args: "train --model ct-sep --opt layers=1,1,1,1 --synth-videos 3 --synth-frames 8 --frames 4 --size 16 --val-ratio 0.34 --batch-size 19 --epochs 1 --device cpu --quiet --out {dir}/drop-last",
        env: &[],
        succeeds: true,
        says: &["done in"],
    },
    fails(
        "train --model ct-sep --opt layers=1,1,1,1 --synth-videos 3 --synth-frames 8 --frames 4 --size 32 --val-ratio 0.34 --batch-size 32 --device cpu --out {dir}/too-few",
        &["20 videos, fewer than --batch-size 32", "--drop-last"],
    ),
    fails(
        "eval --weights {ck} --data {data} --train-list {dir}/huge-label.txt --val-list {dir}/huge-label.txt",
        &["huge-label.txt", "line 1: label 187529126381688 is not below 100000"],
    ),
    fails(
        "dataset synth --out {dir}/synth-huge --classes 1 --videos-per-class 1 --frames 1 --size 1000000",
        &["synthetic options", "size 1000000 → 2048 (8..=2048)"],
    ),
    // the preprocessing line says what is applied, test-time views included
    Case {
        args: "predict --weights {ck} {video} --device cpu --three-crop --clips 2",
        env: &[],
        succeeds: true,
        says: &["preprocessing: 4 frames (checkpoint", "three crops 32×32 (checkpoint)", "2 clips per video (--clips)"],
    },
    // limits checked before work starts (issue 14 §6): the memory plan against the memory available
    // (this used to abort allocating the clip), shapes whose sizes would wrap, images too large
    fails(
        "predict --weights {ck} {video} --device cpu --frames 2000000",
        &["not enough memory on cpu", "CTSepNet", "[1, 3, 2000000, 32, 32]", "GiB by the executor's memory plan", "available (MemAvailable"],
    ),
    fails(
        "predict --weights {ck} {video} --device cpu --clips 1000000",
        &["not enough memory on cpu", "[1000000, 3, 4, 32, 32]", "available (MemAvailable"],
    ),
    fails(
        "explain --weights {ck} {video} --device cpu --out {dir}/huge-cam --frames 2000000",
        &["not enough memory on cpu", "[1, 3, 2000000, 32, 32]"],
    ),
    fails(
        "eval --weights {ck} --data {data} --device cpu --frames 2000000",
        &["not enough memory on cpu", "[8, 3, 2000000, 32, 32]"],
    ),
    fails(
        "train --model ct-sep --opt layers=1,1,1,1 --synth-videos 3 --synth-frames 8 --frames 1000000 --size 32 --val-ratio 0.34 --batch-size 4 --epochs 1 --device cpu --quiet --out {dir}/huge",
        &["not enough memory on cpu", "training forward", "available (MemAvailable"],
    ),
    fails(
        "summary --model ct-sep --input-shape 100000,3,100000,100000,100000",
        &["[100000, 3, 100000, 100000, 100000]", "more than 2^40 elements"],
    ),
    fails(
        "summary --model ct-sep --input-shape 1,3,8,4000000,4000000",
        &["[1, 3, 8, 4000000, 4000000]", "more than 2^40 elements"],
    ),
    fails(
        "explain --weights {ck} {video} --device cpu --out {dir}/tile --tile 20000",
        &["'--tile <TILE>'", "at most 2048"],
    ),
    fails(
        "explain --weights {ck} {video} --device cpu --out {dir}/tile --tile 2000 --frames 64",
        &["64 frames of 2000×2000 pixels (--tile 2000)", "lower --tile or --frames"],
    ),
];

#[test]
fn bad_inputs_get_clear_messages() {
    let files = Files::get();
    let mut failures = vec![];
    for case in CASES {
        let args: Vec<String> = case
            .args
            .split_whitespace()
            .map(|a| files.expand(a))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = run(&args, case.env);
        println!("$ vidgrad {}\n{err}", case.args);
        let mut wrong = vec![];
        if ok != case.succeeds {
            wrong.push(format!("exit {}", if ok { "success" } else { "failure" }));
        }
        for f in case.says {
            if !err.contains(f) {
                wrong.push(format!("no '{f}'"));
            }
        }
        for crash in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            if err.contains(crash) {
                wrong.push(format!("'{crash}' in the output"));
            }
        }
        if !case.succeeds && err.trim().lines().filter(|l| !l.is_empty()).count() > 4 {
            wrong.push("a long error".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "vidgrad {}: {}\n{err}",
                case.args,
                wrong.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `eval` of the shared checkpoint on every video of `data`: (success, the metrics JSON or stdout,
/// stderr).
fn eval_json(files: &Files, data: &Path, name: &str) -> (bool, String, String) {
    let json = files.dir.join(format!("{name}.json"));
    let (ok, out, err) = run(
        &[
            "eval",
            "--weights",
            &files.expand("{ck}"),
            "--data",
            data.to_str().unwrap(),
            // all videos in the validation split, whatever the class order
            "--val-ratio",
            "1",
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    let json = std::fs::read_to_string(&json).unwrap_or_default();
    (ok, if ok { json } else { out }, err)
}

/// A copy of the shared data (frame folders, labels.csv), to be altered.
fn copy_data(files: &Files, name: &str) -> PathBuf {
    let to = files.dir.join(name);
    let _ = std::fs::remove_dir_all(&to);
    let status = std::process::Command::new("cp")
        .args(["-r", &files.expand("{data}"), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    to
}

#[test]
fn eval_matches_classes_by_name() {
    let files = Files::get();
    let data = PathBuf::from(files.expand("{data}"));
    let (ok, with_labels, err) = eval_json(files, &data, "with-labels");
    assert!(ok, "{err}");

    // without labels.csv the classes come in sorted folder order: the same videos, the same metrics
    let sorted = copy_data(files, "no-labels");
    std::fs::remove_file(sorted.join("labels.csv")).unwrap();
    let (ok, without_labels, err) = eval_json(files, &sorted, "no-labels");
    assert!(ok, "{err}");
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&with_labels).unwrap(),
        serde_json::from_str(&without_labels).unwrap(),
    );
    for k in ["confusion", "per_class", "top1", "top5", "count"] {
        assert_eq!(a[k], b[k], "{k}");
    }
    assert!((a["loss"].as_f64().unwrap() - b["loss"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(a["count"], 30);

    // a class the checkpoint does not know (here an empty folder) is an error naming it
    let extra = copy_data(files, "extra-class");
    std::fs::remove_file(extra.join("labels.csv")).unwrap();
    std::fs::create_dir(extra.join("zz_unknown")).unwrap();
    let (ok, _, err) = eval_json(files, &extra, "extra-class");
    assert!(!ok, "evaluated an unknown class");
    assert!(
        err.contains("do not match")
            && err.contains("zz_unknown")
            && err.contains("11 classes in the data, 10 in the model"),
        "{err}"
    );

    // fewer classes than the checkpoint: the missing ones are named
    let fewer = copy_data(files, "fewer-classes");
    std::fs::remove_file(fewer.join("labels.csv")).unwrap();
    std::fs::remove_dir_all(fewer.join("move_left")).unwrap();
    let (ok, _, err) = eval_json(files, &fewer, "fewer-classes");
    assert!(!ok, "evaluated a different class set");
    assert!(
        err.contains("missing from the data") && err.contains("move_left"),
        "{err}"
    );
}

#[test]
fn predict_refuses_labels_that_contradict_the_checkpoint() {
    let files = Files::get();
    let labels = files.dir.join("other-labels.csv");
    std::fs::write(&labels, "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n").unwrap();
    let (ok, _, err) = run(
        &[
            "predict",
            "--weights",
            &files.expand("{ck}"),
            &files.expand("{video}"),
            "--labels",
            labels.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &[],
    );
    assert!(
        !ok && err.contains("--labels") && err.contains("differ from the checkpoint's"),
        "{err}"
    );
    // the plain state dict with --classes and --labels predicts with those names
    let (ok, out, err) = run(
        &[
            "predict",
            "--weights",
            &files.expand("{plain}"),
            "--model",
            "ct-sep",
            "--opt",
            "layers=1,1,1,1",
            "--frames",
            "4",
            "--size",
            "32",
            "--resize-short",
            "0",
            &files.expand("{video}"),
            "--labels",
            labels.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.lines().count() == 6, "{out}");
}

#[test]
fn explain_into_a_used_folder_keeps_only_its_own_frames() {
    let files = Files::get();
    let out = files.dir.join("cam");
    let explain = |frames: &str| {
        run(
            &[
                "explain",
                "--weights",
                &files.expand("{ck}"),
                &files.expand("{video}"),
                "--frames",
                frames,
                "--out",
                out.to_str().unwrap(),
                "--device",
                "cpu",
            ],
            &[],
        )
    };
    let (ok, _, err) = explain("8");
    assert!(ok, "{err}");
    let (ok, _, err) = explain("4");
    assert!(ok, "{err}");
    let mut frames: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("frame_"))
        .collect();
    frames.sort();
    assert_eq!(
        frames,
        [
            "frame_000.png",
            "frame_001.png",
            "frame_002.png",
            "frame_003.png"
        ]
    );
}

/// A copy of the shared data whose `move_left` videos have only their first frame readable (the
/// others truncated or not JPEG at all), so that every clip of them meets unreadable frames.
fn corrupt_data(files: &Files) -> PathBuf {
    let data = copy_data(files, "corrupt-data");
    for v in std::fs::read_dir(data.join("move_left")).unwrap().flatten() {
        for f in std::fs::read_dir(v.path()).unwrap().flatten() {
            let p = f.path();
            if p.file_name().unwrap() == "img_00001.jpg" {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            if p.file_name().unwrap() == "img_00002.jpg" {
                std::fs::write(&p, b"not a jpeg").unwrap();
            } else {
                std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap(); // truncated
            }
        }
    }
    data
}

const UNREADABLE: &str = "unreadable frames (replaced by the nearest readable frame";

/// Issue 14 §3: `predict`, `explain`, `eval` and `train` all report unreadable frames, once each,
/// with a count; `--strict-data` makes them errors naming the video.
#[test]
fn data_problems_are_reported_by_every_command() {
    let files = Files::get();
    let bad = corrupt_data(files);
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let video = s(bad.join("move_left/v_0000"));
    let ck = files.expand("{ck}");
    let cam = s(files.dir.join("cam-corrupt"));
    let json = s(files.dir.join("corrupt-eval.json"));
    #[rustfmt::skip]
    let commands: [Vec<&str>; 3] = [
        vec!["predict", "--weights", &ck, &video, "--device", "cpu"],
        vec!["explain", "--weights", &ck, &video, "--device", "cpu", "--out", &cam],
        vec!["eval", "--weights", &ck, "--data", bad.to_str().unwrap(), "--val-ratio", "1",
             "--device", "cpu", "--json", &json],
    ];
    for args in commands {
        let (ok, _, err) = run(&args, &[]);
        assert!(ok, "{args:?}: {err}");
        assert_eq!(err.matches(UNREADABLE).count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("warning: ") && err.contains("img_0000"),
            "{err}"
        );
        let mut strict = args.clone();
        strict.push("--strict-data");
        let (ok, _, err) = run(&strict, &[]);
        assert!(!ok, "{strict:?} succeeded");
        assert!(
            err.contains("move_left/v_000")
                && err.contains("unreadable frames: ")
                && err.contains("an error under --strict-data")
                && !err.contains("panicked"),
            "{strict:?}: {err}"
        );
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(j["data_warnings"].as_u64().unwrap() > 0, "{j}");

    // train: a count per epoch in the progress line and in metrics.jsonl
    let out = files.dir.join("corrupt-run");
    let mut train = tiny_train_args(&out, 2);
    train.extend(["--data", bad.to_str().unwrap(), "--overwrite"].map(String::from));
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    let (ok, _, err) = run(&train, &[]);
    assert!(ok, "{err}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let counts: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["data_warnings"].as_u64().unwrap())
        .collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n > 0),
        "{counts:?}"
    );
    for (e, n) in counts.iter().enumerate() {
        let line = format!("epoch {}/2: ", e + 1);
        let progress = err.lines().find(|l| l.starts_with(&line)).unwrap();
        assert!(
            progress.ends_with(&format!(", {n} data warnings")),
            "{progress}"
        );
        assert!(
            err.contains(&format!("warning: epoch {}: ", e + 1)),
            "{err}"
        );
    }
    let mut strict = train.clone();
    strict.push("--strict-data");
    let (ok, _, err) = run(&strict, &[]);
    assert!(!ok && err.contains("an error under --strict-data"), "{err}");
}

/// Issue 14 §3 for video files: a truncated mp4 (fewer decodable frames than reported) and a video
/// shorter than the clip are warned about by `predict`, and errors under `--strict-data`.
#[test]
fn video_problems_are_warned_about() {
    if !have_ffmpeg("video_problems_are_warned_about") {
        return;
    }
    let files = Files::get();
    let dir = files.dir.join("videos");
    std::fs::create_dir_all(&dir).unwrap();
    let full = dir.join("full.mp4");
    // 100 frames, a key frame every 10, the index first (faststart): a cut file keeps its count
    let st = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=10",
        ])
        .args(["-frames:v", "100", "-g", "10", "-pix_fmt", "yuv420p"])
        .args(["-movflags", "+faststart", "-y", full.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&full).unwrap();
    let half = dir.join("half.mp4");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let ck = files.expand("{ck}");
    let predict = |video: &PathBuf, frames: &str, strict: bool| {
        let mut a = vec!["predict", "--weights", &ck, video.to_str().unwrap()];
        a.extend([
            "--frames",
            frames,
            "--resize-short",
            "32",
            "--device",
            "cpu",
        ]);
        if strict {
            a.push("--strict-data");
        }
        run(&a, &[])
    };
    let fewer = "videos with fewer decodable frames than ffprobe reported";
    let (ok, _, err) = predict(&half, "8", false);
    assert!(ok, "{err}");
    assert_eq!(err.matches(fewer).count(), 1, "{err}");
    assert!(err.contains("half.mp4: 100 frames reported"), "{err}");
    let (ok, _, err) = predict(&half, "8", true);
    assert!(!ok && err.contains("an error under --strict-data"), "{err}");

    // a stream-copied cut that starts between key frames: the container counts frames that cannot
    // be decoded (38 reported, 32 decodable with ffmpeg 7)
    let cut = dir.join("cut.mp4");
    let st = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-ss", "0.55", "-i", full.to_str().unwrap()])
        .args(["-t", "3", "-c", "copy", "-y", cut.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let (ok, _, err) = predict(&cut, "30", false);
    assert!(ok, "{err}");
    if err.contains("videos with fewer decodable frames") {
        assert_eq!(err.matches(fewer).count(), 1, "{err}");
        assert!(
            err.contains("cut.mp4: ") && err.contains("frames reported"),
            "{err}"
        );
    } else {
        println!(
            "note: this ffmpeg decodes every frame of the cut; that case is not covered\n{err}"
        );
    }

    let shorter = "clips from videos shorter than the number of segments";
    let (ok, _, err) = predict(&full, "120", false);
    assert!(ok, "{err}");
    assert_eq!(err.matches(shorter).count(), 1, "{err}");
    assert!(err.contains("100 frames < 120 segments"), "{err}");
    let (ok, _, err) = predict(&full, "120", true);
    assert!(!ok && err.contains("an error under --strict-data"), "{err}");
}

/// Issue 14 §4: a checkpoint stores its training transform, and inference applies the equivalent to
/// frames of another resolution instead of cropping a small centre of them. The shared checkpoint was
/// trained on 32² frames without a resize; a 160×96 video is resized to short side 32 before its
/// centre 32² crop, so the crop sees the red border around a green centre (the old behaviour, a 32²
/// crop of the full-size frames, saw only green).
#[test]
fn inference_applies_the_stored_transform() {
    let files = Files::get();
    let ck = PathBuf::from(files.expand("{ck}"));
    let meta = checkpoint::read_meta(&ck).unwrap().unwrap();
    let t = &meta["transform"];
    assert_eq!(t["frames"], 4, "{t}");
    assert_eq!(t["crop"], 32, "{t}");
    assert_eq!(t["resize_short"], 32, "{t}");
    assert_eq!(
        t["resize_source"], "first training video's frame size",
        "{t}"
    );
    assert_eq!(t["normalization"], "R2plus1d", "{t}");

    let (spec, line) = checkpoint::inference_clip(Some(&meta), "ct-sep", None, None, None).unwrap();
    assert_eq!((spec.segments, spec.size, spec.resize_short), (4, 32, 32));
    assert!(
        line.contains("short side resized to 32 (checkpoint)"),
        "{line}"
    );

    // a 160×96 video: green in the middle (x 48..112, y 24..72), red around it
    let video = files.dir.join("wide/v");
    std::fs::create_dir_all(&video).unwrap();
    let (w, h) = (160u32, 96u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (48..112).contains(&x) && (24..72).contains(&y) {
            image::Rgb([0, 255, 0])
        } else {
            image::Rgb([255, 0, 0])
        }
    });
    for i in 1..=8 {
        img.save(video.join(format!("img_{i:05}.png"))).unwrap();
    }
    let ds = vidgrad::data::Dataset::open(&video, &Default::default()).unwrap();
    // (red − green) of the first frame at crop pixel (x, y), in the BCTHW layout of ct-sep
    let red_minus_green = |clip: &[f32], x: usize, y: usize| {
        let plane = 4 * 32 * 32;
        clip[y * 32 + x] - clip[plane + y * 32 + x]
    };
    let clip = vidgrad::data::load_clip(&ds, 0, &spec, 0).unwrap();
    assert!(
        red_minus_green(&clip, 0, 16) > 0.0,
        "the crop's left edge is not red"
    );
    assert!(
        red_minus_green(&clip, 16, 16) < 0.0,
        "the crop's centre is not green"
    );
    let old = vidgrad::data::ClipSpec {
        resize_short: 0,
        ..spec.clone()
    };
    let clip = vidgrad::data::load_clip(&ds, 0, &old, 0).unwrap();
    assert!(
        red_minus_green(&clip, 0, 16) < 0.0,
        "test premise: no resize sees only green"
    );

    // the command says what it applies, once
    let (ok, _, err) = run(
        &[
            "predict",
            "--weights",
            ck.to_str().unwrap(),
            video.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(err.matches("preprocessing: 4 frames").count(), 1, "{err}");
    assert!(
        err.contains("short side resized to 32 (checkpoint), centre crop 32×32"),
        "{err}"
    );

    // checkpoints from before the transform was stored: a synthetic run without a resize saw whole
    // frames of its render size
    let old_meta = serde_json::json!({
        "config": {"segments": 8, "size": 64, "resize_short": 0},
        "settings": {"data": "synthetic", "synth_size": null},
    });
    let (spec, _) =
        checkpoint::inference_clip(Some(&old_meta), "eco-lite", None, None, None).unwrap();
    assert_eq!((spec.segments, spec.size, spec.resize_short), (8, 64, 64));
    // a flag wins, and says so
    let (spec, line) =
        checkpoint::inference_clip(Some(&meta), "ct-sep", Some(6), None, Some(40)).unwrap();
    assert_eq!((spec.segments, spec.resize_short), (6, 40));
    assert!(
        line.contains("(--frames") && line.contains("(--resize-short)"),
        "{line}"
    );
}

/// Issue 14 §4: a run on the synthetic set without a resize stores its render size as the resize, so
/// that its checkpoint works on real videos (scaled whole to that size, not cropped at their centre).
#[test]
fn a_synthetic_run_stores_its_render_size_as_the_resize() {
    let out = tmp("synth-transform");
    let args = tiny_train_args(&out, 1); // synthetic, --resize-short 0, --size 32
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run(&args, &[]);
    assert!(ok, "{err}");
    let meta = checkpoint::read_meta(&out.join("last.safetensors"))
        .unwrap()
        .unwrap();
    let t = &meta["transform"];
    assert_eq!(t["resize_short"], 32, "{t}");
    assert_eq!(t["resize_source"], "synthetic frame size", "{t}");
    let (spec, _) = checkpoint::inference_clip(Some(&meta), "ct-sep", None, None, None).unwrap();
    assert_eq!((spec.resize_short, spec.size), (32, 32));
}
