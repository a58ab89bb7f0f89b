//! The data pipeline: every source (synthetic, frame folders with jpg/png and img_/image_ names, labels
//! CSV, mmaction2 list files, video files through ffmpeg), segment sampling, the transforms against
//! torchvision / PIL reference outputs (tests/fixtures/data, written by
//! tools/reference/gen_transform_fixtures.py), the loader (determinism whatever the workers, bounded
//! prefetch) and bad input (corrupt frames, empty folders, short videos, files that are not video,
//! a missing ffmpeg).
//!
//! Tests that need ffmpeg print `skipped: ...` and pass when it is not installed.

mod common;

use common::have_ffmpeg;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use safetensors::SafeTensors;
use serde_json::Value;
use vidgrad::data::transform::{self, Rect};
use vidgrad::data::*;

// --- helpers ------------------------------------------------------------------------------------------

/// A fresh scratch folder under target/tmp.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(path: &Path, f: &Frame) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::save_buffer(
        path,
        &f.data,
        f.width as u32,
        f.height as u32,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A frame whose pixel (x, y) is (x·k, y·k, 40·t) — crops, flips and frame choice can be read back.
fn coord_frame(w: usize, h: usize, t: usize, k: usize) -> Frame {
    let mut d = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            d.extend([(x * k) as u8, (y * k) as u8, (40 * t) as u8]);
        }
    }
    Frame::new(w, h, d)
}

/// Write `n` coordinate frames as `dir/{prefix}{i:05}.{ext}` (1-based).
fn write_frames(dir: &Path, prefix: &str, ext: &str, n: usize, w: usize, h: usize) {
    for t in 0..n {
        save(
            &dir.join(format!("{prefix}{:05}.{ext}", t + 1)),
            &coord_frame(w, h, t, 4),
        );
    }
}

fn warning(ds: &Dataset, what: &str) -> Option<Warning> {
    ds.warnings().into_iter().find(|w| w.what.contains(what))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn test_spec(segments: usize, size: usize) -> ClipSpec {
    ClipSpec {
        segments,
        size,
        resize_short: 0,
        train: false,
        crop: CropMode::Center,
        norm: Normalization::Unit,
        ..ClipSpec::default()
    }
}

// --- synthetic set -------------------------------------------------------------------------------------

fn small_synth() -> SynthConfig {
    SynthConfig {
        classes: 10,
        videos_per_class: 4,
        frames: 16,
        size: 32,
        seed: 3,
    }
}

#[test]
fn synthetic_dataset_is_deterministic() {
    let cfg = small_synth();
    let ds = Dataset::synthetic(&cfg);
    assert_eq!(ds.len(), 40);
    assert_eq!(ds.classes().len(), 10);
    assert_eq!(ds.classes()[0], "move_left");
    assert_eq!(ds.classes()[4], "rotate_cw");
    assert!(SYNTH_CLASSES.len() >= 10);
    assert_eq!(ds.label(5), 1);
    assert_eq!(ds.name(5), "move_right/v_0001");
    assert_eq!(ds.num_frames(0), 16);
    assert!(ds.warnings().is_empty(), "{:?}", ds.warnings());

    let a = render_frame(&cfg, 3, 2, 7);
    assert_eq!((a.width, a.height, a.data.len()), (32, 32, 32 * 32 * 3));
    assert_eq!(a, render_frame(&cfg, 3, 2, 7), "same frame twice");
    assert_ne!(a, render_frame(&cfg, 3, 2, 8), "next frame");
    assert_ne!(a, render_frame(&cfg, 3, 3, 7), "other video");
    let other_seed = SynthConfig {
        seed: 4,
        ..cfg.clone()
    };
    assert_ne!(a, render_frame(&other_seed, 3, 2, 7), "other seed");

    let spec = ClipSpec {
        train: true,
        ..test_spec(8, 32)
    };
    let c1 = load_clip(&ds, 7, &spec, 11).unwrap();
    assert_eq!(c1, load_clip(&ds, 7, &spec, 11).unwrap());
    assert_eq!(c1.len(), spec.clip_len());

    // Flipping would swap left/right and cw/ccw: refused on the synthetic set.
    let flip = ClipSpec {
        flip: true,
        ..spec.clone()
    };
    let e = load_clip(&ds, 0, &flip, 0).unwrap_err().to_string();
    assert!(e.contains("flip") && e.contains("move_right"), "{e}");

    // Out-of-range options are clamped with a warning, not a panic.
    let ds = Dataset::synthetic(&SynthConfig { classes: 99, ..cfg });
    assert_eq!(ds.classes().len(), SYNTH_CLASSES.len());
    let w = warning(&ds, "out of range").expect("warning");
    assert!(w.to_string().contains("classes 99"), "{w}");
}

/// A single frame must not give the class away: a nearest-class-mean classifier on single frames
/// (downsampled to 8×8) stays near chance (0.10). (That the classes are learnable from motion is checked
/// by training, see docs/DATA.md.)
#[test]
fn synthetic_single_frames_do_not_reveal_the_class() {
    let cfg = SynthConfig {
        classes: 10,
        videos_per_class: 40,
        frames: 32,
        size: 32,
        seed: 9,
    };
    let feat = |f: &Frame| -> Vec<f32> {
        let mut v = vec![0f32; 8 * 8 * 3];
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    v[((y / 4) * 8 + x / 4) * 3 + c] += f.data[(y * 32 + x) * 3 + c] as f32 / 16.0;
                }
            }
        }
        v
    };
    let classify = |features: &dyn Fn(usize, usize) -> Vec<f32>| -> f32 {
        let (train, test) = (30, 10);
        let means: Vec<Vec<f32>> = (0..cfg.classes)
            .map(|c| {
                let mut m = vec![0f32; 192];
                for v in 0..train {
                    for (a, b) in m.iter_mut().zip(features(c, v)) {
                        *a += b / train as f32;
                    }
                }
                m
            })
            .collect();
        let mut right = 0;
        for c in 0..cfg.classes {
            for v in train..train + test {
                let f = features(c, v);
                let best = (0..cfg.classes)
                    .min_by(|&a, &b| {
                        let d = |m: &Vec<f32>| {
                            m.iter().zip(&f).map(|(x, y)| (x - y).powi(2)).sum::<f32>()
                        };
                        d(&means[a]).total_cmp(&d(&means[b]))
                    })
                    .unwrap();
                right += (best == c) as usize;
            }
        }
        right as f32 / (cfg.classes * test) as f32
    };
    let single = classify(&|c, v| feat(&render_frame(&cfg, c, v, 16)));
    println!("nearest class mean on single frames: accuracy {single:.2} (chance 0.10)");
    assert!(single <= 0.25, "single frames reveal the class: {single}");
}

#[test]
fn synthetic_generation_is_fast() {
    for size in [64usize, 128] {
        let cfg = SynthConfig {
            size,
            ..SynthConfig::default()
        };
        let ds = Dataset::synthetic(&cfg);
        let spec = ClipSpec {
            train: true,
            ..test_spec(8, size)
        };
        // Warm up, then time whole clips (8 frames each) through the real path.
        load_clip(&ds, 0, &spec, 0).unwrap();
        let t = Instant::now();
        let clips = 40;
        for i in 0..clips {
            load_clip(&ds, (i * 37) % ds.len(), &spec, i as u64).unwrap();
        }
        let per_frame = t.elapsed().as_secs_f64() * 1e3 / (clips * 8) as f64;
        println!("synthetic {size}x{size}: {per_frame:.3} ms per frame (render + clip transform)");
        if size == 64 {
            assert!(per_frame < 2.0, "{per_frame} ms per 64x64 frame");
        }
    }
}

#[test]
fn write_synthetic_roundtrips_through_the_folder_loader() {
    let cfg = SynthConfig {
        classes: 10,
        videos_per_class: 2,
        frames: 8,
        size: 32,
        seed: 5,
    };
    let root = scratch("synth-out");
    write_synthetic(&cfg, &root).unwrap();
    assert!(root.join("move_left/v_0000/img_00001.jpg").is_file());
    assert!(root.join("labels.csv").is_file() && root.join("list.txt").is_file());

    let mem = Dataset::synthetic(&cfg);
    for opts in [
        FolderOptions::default(),
        FolderOptions {
            list_file: Some(root.join("list.txt")),
            ..Default::default()
        },
    ] {
        let disk = Dataset::open(&root, &opts).unwrap();
        assert_eq!(*disk.kind(), DatasetKind::FrameFolders);
        assert!(disk.warnings().is_empty(), "{:?}", disk.warnings());
        assert_eq!(
            disk.classes(),
            mem.classes(),
            "labels.csv keeps the class order"
        );
        assert_eq!(disk.len(), mem.len());
        let spec = test_spec(4, 32);
        for i in 0..disk.len() {
            assert_eq!(disk.name(i), mem.name(i));
            assert_eq!(disk.label(i), mem.label(i));
            assert_eq!(disk.num_frames(i), 8);
        }
        for i in [0, 7, 19] {
            let a = load_clip(&disk, i, &spec, 0).unwrap();
            let b = load_clip(&mem, i, &spec, 0).unwrap();
            let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
            assert!(
                mean * 255.0 < 4.0,
                "JPEG round trip differs by {} levels",
                mean * 255.0
            );
        }
    }
}

// --- frame folders -------------------------------------------------------------------------------------

#[test]
fn frame_folders_jpg_png_and_prefixes() {
    let root = scratch("folders");
    write_frames(&root.join("walk/v1"), "img_", "jpg", 6, 20, 16);
    write_frames(&root.join("walk/v2"), "image_", "png", 4, 20, 16);
    // mmaction2 rawframes keep flow next to the RGB frames: only img_ is taken.
    write_frames(&root.join("jump/v3"), "img_", "png", 5, 20, 16);
    write_frames(&root.join("jump/v3"), "flow_x_", "jpg", 5, 20, 16);
    // Unpadded numbers still sort numerically.
    for t in [1usize, 2, 10] {
        save(
            &root.join(format!("jump/v4/frame{t}.png")),
            &coord_frame(20, 16, t, 4),
        );
    }
    let ds = Dataset::frame_folders(&root, &FolderOptions::default()).unwrap();
    assert_eq!(ds.classes(), ["jump", "walk"]);
    let names: Vec<&str> = (0..ds.len()).map(|i| ds.name(i)).collect();
    assert_eq!(names, ["jump/v3", "jump/v4", "walk/v1", "walk/v2"]);
    assert_eq!(
        (0..4).map(|i| ds.label(i)).collect::<Vec<_>>(),
        [0, 0, 1, 1]
    );
    assert_eq!(
        (0..4).map(|i| ds.num_frames(i)).collect::<Vec<_>>(),
        [5, 3, 6, 4]
    );
    let w = warning(&ds, "without the frame prefix").expect("flow frames reported");
    assert_eq!(w.count, 5);

    // PNG decodes exactly: frame t of the coordinate video has blue = 40·t.
    let spec = test_spec(3, 16);
    let clip = load_clip(&ds, 3, &spec, 0).unwrap(); // walk/v2: 4 frames → centre frames 0, 2, 3
    let plane = 16 * 16;
    for (t, f) in [0usize, 2, 3].into_iter().enumerate() {
        let blue = clip[(t * 3 + 2) * plane] * 255.0;
        assert!(
            (blue - 40.0 * f as f32).abs() < 1e-3,
            "frame {f}: blue {blue}"
        );
    }
    // Unpadded names: frame1, frame2, frame10 in that order (blue 40, 80, 400 mod 256 = 144).
    let clip = load_clip(&ds, 1, &spec, 0).unwrap();
    let blues: Vec<f32> = (0..3)
        .map(|t| (clip[(t * 3 + 2) * plane] * 255.0).round())
        .collect();
    assert_eq!(blues, [40.0, 80.0, 144.0]);
    // JPEG decodes close to the original.
    let clip = load_clip(&ds, 2, &test_spec(6, 16), 0).unwrap();
    let red = clip[10] * 255.0; // frame 0, x = 10 + 2 (centre crop of 20 → 16 starts at 2), red = 4x
    assert!((red - 48.0).abs() < 6.0, "jpeg red {red}");
}

#[test]
fn labels_csv_orders_the_classes() {
    let root = scratch("labels");
    write_frames(&root.join("alpha/a1"), "img_", "png", 3, 8, 8);
    write_frames(&root.join("zeta/z1"), "img_", "png", 3, 8, 8);
    write_frames(&root.join("riding a bike/r1"), "img_", "png", 3, 8, 8);
    write_frames(&root.join("stray/s1"), "img_", "png", 3, 8, 8);
    let csv = root.join("classes.csv");
    // The book's format: header, 1-based ids; quoted names; a class without a folder.
    std::fs::write(
        &csv,
        "\u{feff}class_label,label_id\nzeta,1\nalpha,2\n\"riding_a_bike\",3\nmissing,4\n",
    )
    .unwrap();
    let opts = FolderOptions {
        labels_csv: Some(csv.clone()),
        ..Default::default()
    };
    let ds = Dataset::frame_folders(&root, &opts).unwrap();
    assert_eq!(ds.classes(), ["zeta", "alpha", "riding_a_bike", "missing"]);
    let by_name: BTreeMap<&str, usize> = (0..ds.len()).map(|i| (ds.name(i), ds.label(i))).collect();
    assert_eq!(by_name["zeta/z1"], 0);
    assert_eq!(by_name["alpha/a1"], 1);
    assert_eq!(by_name["riding a bike/r1"], 2, "spaces match underscores");
    assert!(!by_name.contains_key("stray/s1"));
    let w = warning(&ds, "not in the labels file").expect("stray folder reported");
    assert!(w.examples[0].contains("stray"), "{w}");
    assert!(warning(&ds, "without a folder").is_some());
    // Strict: the stray folder is an error naming it.
    let strict = FolderOptions {
        strict: true,
        ..opts
    };
    let e = Dataset::frame_folders(&root, &strict)
        .unwrap_err()
        .to_string();
    assert!(e.contains("stray"), "{e}");

    // Other accepted forms: `id,name`, 0-based, and one name per line.
    std::fs::write(&csv, "0,b\n1,a\n").unwrap();
    assert_eq!(read_labels_csv(&csv).unwrap(), ["b", "a"]);
    std::fs::write(&csv, "x\ny\n").unwrap();
    assert_eq!(read_labels_csv(&csv).unwrap(), ["x", "y"]);
    std::fs::write(&csv, "a,1\nb,1\n").unwrap();
    let e = read_labels_csv(&csv).unwrap_err().to_string();
    assert!(e.contains("classes.csv") && e.contains("id 1"), "{e}");
}

#[test]
fn mmaction2_list_files_select_a_split() {
    let root = scratch("lists");
    write_frames(&root.join("a/v1"), "img_", "jpg", 5, 8, 8);
    write_frames(&root.join("a/v2"), "img_", "jpg", 4, 8, 8);
    write_frames(&root.join("b/v3"), "img_", "jpg", 6, 8, 8);
    let list = root.join("val_list.txt");
    std::fs::write(&list, "b/v3 6 1\na/v1 7 0\na/gone 3 0\n").unwrap();
    let opts = FolderOptions {
        list_file: Some(list.clone()),
        ..Default::default()
    };
    let ds = Dataset::frame_folders(&root, &opts).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!((ds.name(0), ds.label(0)), ("b/v3", 1));
    assert_eq!((ds.name(1), ds.label(1)), ("a/v1", 0));
    assert_eq!(
        ds.classes(),
        ["a", "b"],
        "names from the folders the entries lie in"
    );
    assert_eq!(ds.num_frames(1), 5, "the folder's frames are used");
    assert_eq!(warning(&ds, "frame count differs").unwrap().count, 1);
    let w = warning(&ds, "do not exist").expect("missing entry reported");
    assert!(
        w.examples[0].contains("a/gone") && w.examples[0].contains("line 3"),
        "{w}"
    );
    let strict = FolderOptions {
        strict: true,
        ..opts.clone()
    };
    let e = Dataset::frame_folders(&root, &strict)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a/gone"), "{e}");
    // Auto-detection follows the list.
    assert_eq!(Dataset::open(&root, &opts).unwrap().len(), 2);

    std::fs::write(&list, "a/v1 five 0\n").unwrap();
    let e = Dataset::frame_folders(&root, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("val_list.txt") && e.contains("line 1"), "{e}");
}

#[test]
fn split_is_stratified_and_deterministic() {
    let ds = Dataset::synthetic(&SynthConfig {
        videos_per_class: 10,
        ..small_synth()
    });
    let (t, v) = ds.split(0.2, 7);
    assert_eq!((t.len(), v.len()), (80, 20));
    for c in 0..10 {
        assert_eq!(
            (0..v.len()).filter(|&i| v.label(i) == c).count(),
            2,
            "class {c}"
        );
    }
    let names = |d: &Dataset| {
        (0..d.len())
            .map(|i| d.name(i).to_string())
            .collect::<Vec<_>>()
    };
    let (t2, v2) = ds.split(0.2, 7);
    assert_eq!((names(&t), names(&v)), (names(&t2), names(&v2)));
    let (_, v3) = ds.split(0.2, 8);
    assert_ne!(names(&v), names(&v3), "another seed, another split");
    let mut all = names(&t);
    all.extend(names(&v));
    all.sort();
    let mut orig = names(&ds);
    orig.sort();
    assert_eq!(all, orig, "a partition");
}

#[test]
fn open_detects_what_a_path_holds() {
    let root = scratch("open");
    write_frames(&root.join("c/v"), "img_", "png", 3, 8, 8);
    assert_eq!(
        *Dataset::open(&root, &FolderOptions::default())
            .unwrap()
            .kind(),
        DatasetKind::FrameFolders
    );
    let one = Dataset::open(&root.join("c/v"), &FolderOptions::default()).unwrap();
    assert_eq!((one.len(), one.num_frames(0)), (1, 3));
    assert_eq!(one.classes(), ["unlabelled"]);

    let txt = root.join("notes.txt");
    std::fs::write(&txt, "not a video").unwrap();
    let e = Dataset::open(&txt, &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("notes.txt") && e.contains("not a video"), "{e}");
    let e = Dataset::open(&root.join("nothing"), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing") && e.contains("does not exist"), "{e}");
    let empty = scratch("open-empty");
    let e = Dataset::open(&empty, &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no videos found"), "{e}");
}

// --- video files ---------------------------------------------------------------------------------------

/// Encode coordinate frames (as PNGs in `tmp`) into `out` with ffmpeg `codec_args`.
fn encode_video(tmp: &Path, out: &Path, n: usize, w: usize, h: usize, codec_args: &[&str]) -> bool {
    let frames = tmp.join(format!("src-{w}x{h}-{n}"));
    if !frames.exists() {
        for t in 0..n {
            // Smooth content so lossy codecs stay close.
            let mut f = coord_frame(w, h, t, 2);
            for p in f.data.chunks_exact_mut(3) {
                p[2] = (20 * t) as u8;
            }
            save(&frames.join(format!("f_{:05}.png", t + 1)), &f);
        }
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-framerate", "25", "-i"])
        .arg(frames.join("f_%05d.png"))
        .args(codec_args)
        .arg(out)
        .status()
        .unwrap();
    st.success()
}

#[test]
fn video_files_decode_through_ffmpeg() {
    if !have_ffmpeg("video_files_decode_through_ffmpeg") {
        return;
    }
    let root = scratch("videos");
    let tmp = scratch("videos-src");
    // Lossless (FFV1 in MKV, RGB) so that the frames can be compared exactly with the PNGs.
    assert!(encode_video(
        &tmp,
        &root.join("pan/lossless.mkv"),
        10,
        40,
        24,
        &["-c:v", "ffv1", "-pix_fmt", "bgr0"]
    ));
    assert!(encode_video(
        &tmp,
        &root.join("pan/clip.mp4"),
        10,
        40,
        24,
        &["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"]
    ));
    assert!(encode_video(
        &tmp,
        &root.join("tilt/clip.avi"),
        7,
        40,
        24,
        &["-c:v", "mjpeg", "-q:v", "2"]
    ));
    let webm = encode_video(
        &tmp,
        &root.join("tilt/clip.webm"),
        9,
        40,
        24,
        &["-c:v", "libvpx", "-b:v", "1M"],
    );
    if !webm {
        println!("note: this ffmpeg cannot encode webm (libvpx); webm not covered");
    }
    let ds = Dataset::open(&root, &FolderOptions::default()).unwrap();
    assert_eq!(*ds.kind(), DatasetKind::VideoFiles);
    assert_eq!(ds.classes(), ["pan", "tilt"]);
    assert!(ds.warnings().is_empty(), "{:?}", ds.warnings());
    let mut by_name = BTreeMap::new();
    for i in 0..ds.len() {
        by_name.insert(ds.name(i).to_string(), i);
    }
    assert_eq!(ds.num_frames(by_name["pan/lossless.mkv"]), 10);
    assert_eq!(ds.num_frames(by_name["pan/clip.mp4"]), 10);
    assert_eq!(ds.num_frames(by_name["tilt/clip.avi"]), 7);
    if webm {
        assert_eq!(ds.num_frames(by_name["tilt/clip.webm"]), 9);
    }

    // The same clip from the PNG frames and from the lossless video: identical.
    let frames = Dataset::open(&tmp.join("src-40x24-10"), &FolderOptions::default()).unwrap();
    let spec = test_spec(4, 24);
    let from_png = load_clip(&frames, 0, &spec, 0).unwrap();
    let from_mkv = load_clip(&ds, by_name["pan/lossless.mkv"], &spec, 0).unwrap();
    assert_eq!(max_abs_diff(&from_png, &from_mkv), 0.0);
    // Lossy codecs: close, and the right frames (blue = 20·t).
    for name in ["pan/clip.mp4", "tilt/clip.avi", "tilt/clip.webm"] {
        let Some(&i) = by_name.get(name) else {
            continue;
        };
        let n = ds.num_frames(i);
        let c = load_clip(&ds, i, &spec, 0).unwrap();
        let idx = segment_indices(n, 4, Sampling::Test { clip: 0, clips: 1 });
        for (t, &f) in idx.iter().enumerate() {
            let plane = &c[(t * 3 + 2) * 24 * 24..][..24 * 24];
            let blue = plane.iter().sum::<f32>() / plane.len() as f32 * 255.0;
            assert!(
                (blue - 20.0 * f as f32).abs() < 6.0,
                "{name} frame {f}: blue {blue}"
            );
        }
    }
    // Resized by ffmpeg to the clip's short side: 40x24 → 20x12 (short side 12), crop 12.
    let small = ClipSpec {
        resize_short: 12,
        ..test_spec(4, 12)
    };
    assert_eq!(
        load_clip(&ds, by_name["pan/clip.mp4"], &small, 0)
            .unwrap()
            .len(),
        small.clip_len()
    );
    // A video shorter than the segments: the last frame repeats.
    let c = load_clip(&ds, by_name["tilt/clip.avi"], &test_spec(9, 24), 0).unwrap();
    let fl = 3 * 24 * 24;
    assert_eq!(c[6 * fl..7 * fl], c[8 * fl..9 * fl]);
}

#[test]
fn files_that_are_not_video_are_reported() {
    if !have_ffmpeg("files_that_are_not_video_are_reported") {
        return;
    }
    let root = scratch("not-video");
    let tmp = scratch("not-video-src");
    assert!(encode_video(
        &tmp,
        &root.join("a/good.mp4"),
        5,
        16,
        16,
        &["-c:v", "mpeg4"]
    ));
    std::fs::write(root.join("a/fake.mp4"), "this is text, not a video").unwrap();
    std::fs::write(root.join("a/notes.txt"), "notes").unwrap();
    let ds = Dataset::video_files(&root, &FolderOptions::default()).unwrap();
    assert_eq!(ds.len(), 1);
    let w = warning(&ds, "unreadable video").expect("fake.mp4 reported");
    assert_eq!(w.count, 1);
    assert!(w.examples[0].contains("fake.mp4"), "{w}");
    let w = warning(&ds, "not videos").expect("notes.txt reported");
    assert!(w.examples[0].contains("notes.txt"), "{w}");
    let strict = FolderOptions {
        strict: true,
        ..Default::default()
    };
    let e = Dataset::video_files(&root, &strict)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fake.mp4") && e.contains("not a readable video"),
        "{e}"
    );
    let e = Dataset::open(&root.join("a/fake.mp4"), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fake.mp4"), "{e}");
}

#[test]
fn missing_ffmpeg_is_named() {
    let root = scratch("no-ffmpeg");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/v.mp4"), "x").unwrap();
    let opts = FolderOptions {
        ffprobe: Some("/nonexistent/vidgrad-test/ffprobe".into()),
        ffmpeg: Some("/nonexistent/vidgrad-test/ffmpeg".into()),
        ..Default::default()
    };
    let e = Dataset::video_files(&root, &opts).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("ffmpeg") && e.contains("not found") && e.contains("v.mp4"),
        "{e}"
    );

    // Probed with a working ffprobe, decoded with a missing ffmpeg.
    if !have_ffmpeg("missing_ffmpeg_is_named (decode part)") {
        return;
    }
    let tmp = scratch("no-ffmpeg-src");
    assert!(encode_video(
        &tmp,
        &root.join("a/v.mp4"),
        5,
        16,
        16,
        &["-c:v", "mpeg4"]
    ));
    let opts = FolderOptions {
        ffmpeg: Some("/nonexistent/vidgrad-test/ffmpeg".into()),
        ..Default::default()
    };
    let ds = Dataset::video_files(&root, &opts).unwrap();
    let e = load_clip(&ds, 0, &test_spec(2, 16), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ffmpeg") && e.contains("not found"), "{e}");
}

// --- sampling ------------------------------------------------------------------------------------------

#[test]
fn segment_sampling() {
    let test = Sampling::Test { clip: 0, clips: 1 };
    // TSN test indices: int(tick/2 + tick·k).
    assert_eq!(segment_indices(32, 8, test), [2, 6, 10, 14, 18, 22, 26, 30]);
    assert_eq!(segment_indices(10, 4, test), [1, 3, 6, 8]);
    assert_eq!(segment_indices(8, 8, test), [0, 1, 2, 3, 4, 5, 6, 7]);
    // Several clips: evenly spread inside each segment.
    assert_eq!(
        segment_indices(32, 4, Sampling::Test { clip: 0, clips: 2 }),
        [2, 10, 18, 26]
    );
    assert_eq!(
        segment_indices(32, 4, Sampling::Test { clip: 1, clips: 2 }),
        [6, 14, 22, 30]
    );
    // Shorter than the segments: the last frame repeats (ECO), train and test alike.
    assert_eq!(segment_indices(3, 6, test), [0, 1, 2, 2, 2, 2]);
    assert_eq!(
        segment_indices(3, 6, Sampling::Train { seed: 1 }),
        [0, 1, 2, 2, 2, 2]
    );
    assert!(segment_indices(0, 4, test).is_empty());

    // Train: one uniform frame per segment of avg = n / T frames.
    let (n, t) = (37, 8);
    let avg = n / t;
    let mut seen = vec![vec![0usize; avg]; t];
    for seed in 0..2000 {
        let idx = segment_indices(n, t, Sampling::Train { seed });
        assert_eq!(
            idx,
            segment_indices(n, t, Sampling::Train { seed }),
            "seeded"
        );
        for (k, &i) in idx.iter().enumerate() {
            assert!((k * avg..(k + 1) * avg).contains(&i), "segment {k}: {i}");
            seen[k][i - k * avg] += 1;
        }
    }
    for (k, s) in seen.iter().enumerate() {
        assert!(s.iter().all(|&c| c > 300), "segment {k} offsets {s:?}");
    }
}

#[test]
fn short_videos_repeat_the_last_frame_with_a_warning() {
    let root = scratch("short");
    write_frames(&root.join("c/v"), "img_", "png", 3, 8, 8);
    let ds = Dataset::frame_folders(&root, &FolderOptions::default()).unwrap();
    let spec = test_spec(5, 8);
    let clip = load_clip(&ds, 0, &spec, 0).unwrap();
    let fl = 3 * 64;
    let blue = |t: usize| (clip[t * fl + 2 * 64] * 255.0).round();
    assert_eq!(
        (0..5).map(blue).collect::<Vec<_>>(),
        [0.0, 40.0, 80.0, 80.0, 80.0]
    );
    let w = warning(&ds, "shorter than the number of segments").expect("warning");
    assert_eq!(w.count, 1);
    assert!(w.examples[0].contains("3 frames < 5 segments"), "{w}");
}

// --- transforms against torchvision / PIL ---------------------------------------------------------------

struct Reference {
    cases: BTreeMap<String, Value>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    frames: Vec<Frame>,
    dir: PathBuf,
}

fn reference() -> Reference {
    let root = std::env::var_os("VIDGRAD_FIXTURE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = root.join("tests/fixtures/data");
    let bytes = std::fs::read(dir.join("transforms.safetensors")).expect("fixture");
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    let cases: BTreeMap<String, Value> = serde_json::from_str(&meta["cases"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::U8 => view.data().iter().map(|&b| b as f32).collect(),
            d => panic!("{name}: {d:?}"),
        };
        tensors.insert(name.to_string(), (view.shape().to_vec(), data));
    }
    let frames = (0..3)
        .map(|t| read_frame(&dir.join(format!("frame_{t}.png"))).unwrap())
        .collect();
    Reference {
        cases,
        tensors,
        frames,
        dir,
    }
}

fn norm_of(s: &str) -> Normalization {
    match s {
        "eco" => Normalization::Eco,
        "eco_book" => Normalization::EcoBook,
        "mmaction2" => Normalization::Mmaction2,
        "r2plus1d" => Normalization::R2plus1d,
        "unit" => Normalization::Unit,
        _ => panic!("{s}"),
    }
}

/// Tolerance of the float path against torchvision, in 0–255 pixel units before normalisation
/// (the same antialiased bilinear filter; only f32 summation order differs).
const TV_TOL_PIXELS: f32 = 2e-3;

#[test]
fn transforms_match_torchvision() {
    let r = reference();
    assert_eq!((r.frames[0].width, r.frames[0].height), (41, 29));
    let frames: Vec<&Frame> = r.frames.iter().collect();
    for (name, case) in &r.cases {
        if name.starts_with("pil.") {
            continue;
        }
        let resized = case["resized"].as_array().unwrap();
        let (rw, rh) = (
            resized[0].as_u64().unwrap() as usize,
            resized[1].as_u64().unwrap() as usize,
        );
        let short = case["resize_short"].as_u64().unwrap() as usize;
        assert_eq!(
            transform::resized_size(41, 29, short),
            (rw, rh),
            "{name}: resize rule"
        );
        let norm = norm_of(case["norm"].as_str().unwrap());
        let layout = if case["layout"] == "BCTHW" {
            Layout::BCTHW
        } else {
            Layout::BTCHW
        };
        let flip = case["flip"].as_bool().unwrap();
        let mut ours = Vec::new();
        let rects: Vec<Rect> = case["rects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v: Vec<usize> = r
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                Rect {
                    x: v[0],
                    y: v[1],
                    w: v[2],
                    h: v[3],
                }
            })
            .collect();
        // The crop helpers give the reference's offsets.
        let size = case["size"].as_u64().unwrap() as usize;
        if name.contains("center") || name.contains("upscale") {
            assert_eq!(
                rects,
                [transform::center_crop(rw, rh, size, size)],
                "{name}: centre crop"
            );
        }
        if name.contains("three_crop") {
            assert_eq!(
                rects,
                transform::three_crop(rw, rh, size, size),
                "{name}: three crop"
            );
        }
        for &rect in &rects {
            let resize = (short != 0).then_some((rw, rh));
            ours.extend(transform::clip_from_frames(
                &frames, resize, rect, flip, norm, layout,
            ));
        }
        let (shape, want) = &r.tensors[name.as_str()];
        assert_eq!(ours.len(), want.len(), "{name}: shape {shape:?}");
        let std_min = norm
            .channels()
            .iter()
            .map(|c| c.3 / c.1)
            .fold(f32::MAX, f32::min);
        let err = max_abs_diff(&ours, want) * std_min; // back to 0–255 units
        println!("{name:<22} {shape:?}: max |ours − torchvision| = {err:.2e} pixel levels (tolerance {TV_TOL_PIXELS:.0e})");
        assert!(err <= TV_TOL_PIXELS, "{name}: {err}");
    }
}

/// load_clip (test mode, centre crop) on a frame folder of the fixture frames gives torchvision's
/// clip: sampling, resize, crop, normalisation and layout through the public path.
#[test]
fn load_clip_matches_torchvision() {
    let r = reference();
    let root = scratch("reference-folder");
    for t in 0..3 {
        std::fs::copy(
            r.dir.join(format!("frame_{t}.png")),
            root.join(format!("img_{:05}.png", t + 1)),
        )
        .unwrap();
    }
    let ds = Dataset::open(&root, &FolderOptions::default()).unwrap();
    for (case, norm, layout, size, short) in [
        ("eco_center", Normalization::Eco, Layout::BTCHW, 20, 24),
        (
            "eco_book_center",
            Normalization::EcoBook,
            Layout::BTCHW,
            20,
            24,
        ),
        (
            "r2plus1d_upscale",
            Normalization::R2plus1d,
            Layout::BCTHW,
            36,
            48,
        ),
    ] {
        let spec = ClipSpec {
            segments: 3,
            size,
            resize_short: short,
            train: false,
            clips_per_video: 1,
            crop: CropMode::Center,
            flip: false,
            norm,
            layout,
        };
        let ours = load_clip(&ds, 0, &spec, 0).unwrap();
        let want = &r.tensors[case].1;
        let std_min = norm
            .channels()
            .iter()
            .map(|c| c.3 / c.1)
            .fold(f32::MAX, f32::min);
        let err = max_abs_diff(&ours, want) * std_min; // 0–255 units
        println!("load_clip {case}: max error {err:.2e} pixel levels");
        assert!(err <= TV_TOL_PIXELS, "{case}: {err}");
    }
    let spec = ClipSpec {
        segments: 3,
        size: 20,
        resize_short: 20,
        train: false,
        crop: CropMode::ThreeCrop,
        norm: Normalization::Unit,
        layout: Layout::BTCHW,
        ..ClipSpec::default()
    };
    assert_eq!(spec.views(), 3);
    let ours = load_clip(&ds, 0, &spec, 0).unwrap();
    let err = max_abs_diff(&ours, &r.tensors["unit_three_crop"].1) * 255.0;
    assert!(err <= TV_TOL_PIXELS, "three crop: {err}");
}

/// Against PIL's uint8 bilinear resize (what PIL-based pipelines such as the ECO book's feed the
/// network): PIL rounds to 8 bits after each pass and uses fixed-point weights, so the tolerance is a
/// rounding one: at most 1.5 levels anywhere, 0.5 on average.
#[test]
fn resize_matches_pil_within_rounding() {
    let r = reference();
    let (shape, want) = &r.tensors["pil.resize24"];
    assert_eq!(shape, &[24, 33, 3]);
    let ours = transform::resize_crop(
        &r.frames[0],
        33,
        24,
        Rect {
            x: 0,
            y: 0,
            w: 33,
            h: 24,
        },
    );
    let max = max_abs_diff(&ours, want);
    let mean = ours
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / ours.len() as f32;
    println!("PIL uint8 resize: max {max:.3}, mean {mean:.3} levels");
    assert!(max <= 1.5 && mean <= 0.5, "max {max} mean {mean}");
}

#[test]
fn random_crops_and_flips_cover_their_range() {
    let root = scratch("crops");
    write_frames(&root.join("c/v"), "img_", "png", 4, 30, 20);
    let ds = Dataset::frame_folders(&root, &FolderOptions::default()).unwrap();
    let spec = ClipSpec {
        segments: 2,
        size: 16,
        resize_short: 0,
        train: true,
        crop: CropMode::Random,
        flip: true,
        norm: Normalization::Unit,
        layout: Layout::BTCHW,
        ..ClipSpec::default()
    };
    let (mut xs, mut ys, mut flips) = (BTreeMap::new(), BTreeMap::new(), 0);
    let n = 600;
    for seed in 0..n {
        let c = load_clip(&ds, 0, &spec, seed).unwrap();
        // Red = 4x, green = 4y at the crop's pixel (0, 0) and (15, 0).
        let (left, right) = (
            (c[0] * 255.0 / 4.0).round() as usize,
            (c[15] * 255.0 / 4.0).round() as usize,
        );
        let y = (c[256] * 255.0 / 4.0).round() as usize;
        let flipped = left > right;
        flips += flipped as usize;
        let x0 = left.min(right);
        assert_eq!(left.max(right) - x0, 15);
        assert!(x0 <= 14 && y <= 4, "crop at ({x0}, {y})");
        *xs.entry(x0).or_insert(0) += 1;
        *ys.entry(y).or_insert(0) += 1;
        // Both frames of the clip share the crop and the flip.
        assert_eq!(c[0], c[3 * 256]);
    }
    assert_eq!(xs.len(), 15, "x offsets 0..=14: {xs:?}");
    assert_eq!(ys.len(), 5, "y offsets 0..=4: {ys:?}");
    assert!(
        (n as usize / 2).abs_diff(flips) < 60,
        "{flips} flips of {n}"
    );
    // No flips in test mode, centre crop there.
    let test = ClipSpec {
        train: false,
        crop: CropMode::Center,
        ..spec.clone()
    };
    let c = load_clip(&ds, 0, &test, 3).unwrap();
    assert_eq!(
        ((c[0] * 255.0 / 4.0).round(), (c[256] * 255.0 / 4.0).round()),
        (7.0, 2.0)
    );

    // A crop larger than the frame: a clear error.
    let big = ClipSpec { size: 24, ..test };
    let e = load_clip(&ds, 0, &big, 0).unwrap_err().to_string();
    assert!(e.contains("does not fit") && e.contains("c/v"), "{e}");
}

#[test]
fn layouts_are_transposes_of_each_other() {
    let ds = Dataset::synthetic(&small_synth());
    let a = ClipSpec {
        layout: Layout::BTCHW,
        ..test_spec(4, 24)
    };
    let b = ClipSpec {
        layout: Layout::BCTHW,
        ..a.clone()
    };
    let (x, y) = (
        load_clip(&ds, 3, &a, 0).unwrap(),
        load_clip(&ds, 3, &b, 0).unwrap(),
    );
    let p = 24 * 24;
    for t in 0..4 {
        for c in 0..3 {
            assert_eq!(x[(t * 3 + c) * p..][..p], y[(c * 4 + t) * p..][..p]);
        }
    }
    assert_eq!(a.clip_shape(), [4, 3, 24, 24]);
    assert_eq!(b.clip_shape(), [3, 4, 24, 24]);
}

// --- loader --------------------------------------------------------------------------------------------

fn collect(loader: &Loader, epoch: usize) -> Vec<Batch> {
    loader.epoch(epoch).map(|b| b.unwrap()).collect()
}

#[test]
fn loader_is_deterministic_whatever_the_workers() {
    let ds = Arc::new(Dataset::synthetic(&small_synth())); // 40 videos
    let spec = ClipSpec {
        train: true,
        crop: CropMode::Random,
        resize_short: 28,
        ..test_spec(4, 24)
    };
    let make =
        |workers, prefetch| Loader::new(ds.clone(), spec.clone(), 6, true, 42, workers, prefetch);
    let reference = make(0, 1);
    assert_eq!(reference.batches_per_epoch(), 7);
    let e0 = collect(&reference, 0);
    let e1 = collect(&reference, 1);
    assert_eq!(e0.len(), 7);
    assert_eq!(e0[6].labels.len(), 4, "drop_last = false");
    assert_eq!(e0[0].shape, [6, 4, 3, 24, 24]);
    assert_eq!(e0[6].shape, [4, 4, 3, 24, 24]);
    let mut seen: Vec<usize> = e0.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort();
    assert_eq!(seen, (0..40).collect::<Vec<_>>(), "every video once");
    for b in &e0 {
        assert_eq!(b.data.len(), b.shape.iter().product::<usize>());
        for (l, i) in b.labels.iter().zip(&b.indices) {
            assert_eq!(*l, ds.label(*i));
        }
    }
    assert_ne!(e0[0].indices, e1[0].indices, "reshuffled per epoch");
    for (workers, prefetch) in [(1, 1), (2, 2), (3, 4), (5, 2)] {
        let l = make(workers, prefetch);
        assert_eq!(
            collect(&l, 0),
            e0,
            "epoch 0 with {workers} workers, prefetch {prefetch}"
        );
        assert_eq!(
            collect(&l, 1),
            e1,
            "epoch 1 with {workers} workers, prefetch {prefetch}"
        );
    }
    // Unshuffled: dataset order.
    let plain = Loader::new(ds.clone(), spec.clone(), 16, false, 42, 2, 2);
    let b = collect(&plain, 0);
    assert_eq!(b[0].indices, (0..16).collect::<Vec<_>>());
}

#[test]
fn loader_prefetch_is_bounded_and_waits_are_timed() {
    let ds = Arc::new(Dataset::synthetic(&SynthConfig {
        videos_per_class: 3,
        ..small_synth()
    }));
    let spec = test_spec(4, 32);
    let loader = Loader::new(ds.clone(), spec, 2, true, 1, 3, 2); // 15 batches
    let mut n = 0;
    for b in loader.epoch(0) {
        b.unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(30)); // a slow trainer: workers run ahead
        assert!(
            loader.max_prefetched() <= 2,
            "{} batches ahead",
            loader.max_prefetched()
        );
    }
    assert_eq!(n, 15);
    assert_eq!(loader.max_prefetched(), 2, "workers filled the prefetch");
    let waited = loader.wait_time();
    println!("slow consumer waited {waited:?} in total");

    // A fast consumer on a single worker has to wait.
    let slow = Loader::new(ds.clone(), test_spec(8, 32), 8, false, 1, 1, 1);
    let before = slow.wait_time();
    let _ = collect(&slow, 0);
    assert!(slow.wait_time() > before);
    slow.reset_wait_time();
    assert_eq!(slow.wait_time(), Duration::ZERO);

    // Dropping an epoch half way stops its workers (this would hang otherwise).
    let mut it = loader.epoch(1);
    it.next().unwrap().unwrap();
    drop(it);
}

#[test]
fn test_mode_gives_several_views_per_video() {
    let ds = Arc::new(Dataset::synthetic(&small_synth()));
    let spec = ClipSpec {
        clips_per_video: 2,
        crop: CropMode::ThreeCrop,
        resize_short: 32,
        ..test_spec(4, 24)
    };
    assert_eq!(spec.views(), 6);
    let loader = Loader::new(ds.clone(), spec.clone(), 3, false, 0, 2, 2);
    let b = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.shape, [18, 4, 3, 24, 24]);
    assert_eq!(
        b.indices,
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    );
    let clip = load_clip(&ds, 1, &spec, 0).unwrap();
    assert_eq!(clip[..], b.data[6 * spec.clip_len()..12 * spec.clip_len()]);
}

// --- bad input -----------------------------------------------------------------------------------------

#[test]
fn corrupt_frames_are_replaced_with_a_warning() {
    let root = scratch("corrupt");
    write_frames(&root.join("c/v"), "img_", "jpg", 4, 8, 8);
    std::fs::write(
        root.join("c/v/img_00002.jpg"),
        b"\xff\xd8\xff garbage, not a jpeg",
    )
    .unwrap();
    write_frames(&root.join("c/dead"), "img_", "jpg", 2, 8, 8);
    for t in 1..=2 {
        std::fs::write(root.join(format!("c/dead/img_{t:05}.jpg")), b"").unwrap();
    }
    let ds = Dataset::frame_folders(&root, &FolderOptions::default()).unwrap();
    let v = (0..ds.len()).find(|&i| ds.name(i) == "c/v").unwrap();
    let clip = load_clip(&ds, v, &test_spec(4, 8), 0).unwrap();
    let fl = 3 * 64;
    let blue = |t: usize| (clip[t * fl + 2 * 64] * 255.0 / 40.0).round();
    // Frame 1 (img_00002) is replaced by its nearest readable neighbour, frame 0.
    assert_eq!((0..4).map(blue).collect::<Vec<_>>(), [0.0, 0.0, 2.0, 3.0]);
    let w = warning(&ds, "unreadable frames").expect("warning");
    assert_eq!(w.count, 1);
    assert!(w.examples[0].contains("img_00002.jpg"), "{w}");
    // A video with no readable frame: an error naming it.
    let dead = (0..ds.len()).find(|&i| ds.name(i) == "c/dead").unwrap();
    let e = load_clip(&ds, dead, &test_spec(2, 8), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c/dead") && e.contains("no readable frame"),
        "{e}"
    );
    // Through the loader: the batch with it is an error, the others load.
    let loader = Loader::new(Arc::new(ds), test_spec(2, 8), 1, false, 0, 2, 2);
    let results: Vec<bool> = loader.epoch(0).map(|b| b.is_ok()).collect();
    assert_eq!(results.iter().filter(|ok| !**ok).count(), 1, "{results:?}");
}

#[test]
fn empty_folders_are_reported() {
    let root = scratch("empty");
    write_frames(&root.join("full/v1"), "img_", "png", 3, 8, 8);
    std::fs::create_dir_all(root.join("empty_class")).unwrap();
    std::fs::create_dir_all(root.join("full/no_frames")).unwrap();
    std::fs::write(root.join("full/no_frames/readme.txt"), "x").unwrap();
    let ds = Dataset::frame_folders(&root, &FolderOptions::default()).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(
        ds.classes(),
        ["empty_class", "full"],
        "the empty class keeps its label"
    );
    let w = warning(&ds, "empty class folders").expect("empty class reported");
    assert!(w.examples[0].contains("empty_class"), "{w}");
    let w = warning(&ds, "without frames").expect("frameless video reported");
    assert!(w.examples[0].contains("no_frames"), "{w}");
    assert!(
        warning(&ds, "not frame images").is_some(),
        "readme.txt reported"
    );
    for w in ds.warnings() {
        println!("warning: {w}");
    }
    let strict = FolderOptions {
        strict: true,
        ..Default::default()
    };
    let e = Dataset::frame_folders(&root, &strict)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_frames"), "{e}");
    // Nothing usable at all: an error that says what was expected and what was wrong.
    let none = scratch("empty-only");
    std::fs::create_dir_all(none.join("a/v")).unwrap();
    let e = Dataset::frame_folders(&none, &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no usable videos") && e.contains("without frames"),
        "{e}"
    );
}
