//! Fuzz targets (issue 14 §8), run by `cargo test` for a bounded number of cases (proptest; set
//! `PROPTEST_CASES` for a longer run): the safetensors and checkpoint readers, labels CSV and
//! mmaction2 list parsing, and frame decoding, on valid inputs with random damage and on random bytes.
//! Each must return a value or an error — never panic, hang or allocate without bound. Failing cases
//! are shrunk and printed by proptest; they are not stored (`failure_persistence: None`), so add a
//! shrunk case to tests/bad_inputs.rs when one is found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::Config;

use vidgrad::data::{load_clip, read_frame, read_labels_csv, ClipSpec, CropMode, Dataset};
use vidgrad::data::{FolderOptions, Layout, Normalization};
use vidgrad::io::{load_safetensors, to_safetensors_bytes, StateDict};
use vidgrad::train::checkpoint;
use vidgrad::{Device, Tensor};

fn config() -> Config {
    Config {
        // a second or so in CI; PROPTEST_CASES=100000 for a long hunt
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..Config::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vidgrad-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh file path under `dir` (cases run one after another, but names never repeat).
fn fresh(dir: &Path, ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("case{}.{ext}", N.fetch_add(1, Ordering::Relaxed)))
}

/// Damage to a valid file: cut it, overwrite a few bytes, or both.
#[derive(Debug, Clone)]
struct Damage {
    cut: Option<usize>,
    writes: Vec<(usize, u8)>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        proptest::option::of(any::<usize>()),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    )
        .prop_map(|(cut, writes)| Damage { cut, writes })
}

fn apply(bytes: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(at, v) in &d.writes {
        if !b.is_empty() {
            let i = at % b.len();
            b[i] = v;
        }
    }
    if let Some(c) = d.cut {
        b.truncate(c % (bytes.len() + 1));
    }
    b
}

/// A valid checkpoint-like safetensors file: two tensors and vidgrad's metadata.
fn valid_safetensors() -> Vec<u8> {
    let mut sd = StateDict::new();
    sd.insert(
        "fc.weight".into(),
        Tensor::from_vec((0..12).map(|i| i as f32).collect(), &[3, 4], Device::Cpu).unwrap(),
    );
    sd.insert(
        "fc.bias".into(),
        Tensor::from_vec(vec![0.5; 3], &[3], Device::Cpu).unwrap(),
    );
    let meta: BTreeMap<String, String> = [(
        "vidgrad_checkpoint".to_string(),
        r#"{"model":"ct-sep","classes":["a","b","c"],"config":{"segments":4,"size":32}}"#
            .to_string(),
    )]
    .into();
    to_safetensors_bytes(&sd, Some(&meta)).unwrap()
}

/// Every reader of a safetensors file on `bytes`: a result, and a consistent one when it is Ok.
fn read_all_ways(dir: &Path, bytes: &[u8]) {
    let p = fresh(dir, "safetensors");
    std::fs::write(&p, bytes).unwrap();
    if let Ok((sd, _)) = load_safetensors(&p, Device::Cpu) {
        for t in sd.values() {
            assert_eq!(
                t.to_vec().unwrap().len(),
                t.shape().iter().product::<usize>()
            );
        }
    }
    let _ = checkpoint::read_meta(&p);
    let _ = checkpoint::load_weights(&p, Device::Cpu);
    let _ = checkpoint::load(&p, Device::Cpu);
    let _ = std::fs::remove_file(&p);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn safetensors_reader_survives_damage(d in damage()) {
        let dir = scratch("st");
        read_all_ways(&dir, &apply(&valid_safetensors(), &d));
    }

    #[test]
    fn safetensors_reader_survives_random_headers(
        len in any::<u64>(),
        header in "[ -~]{0,200}",
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // an 8-byte header length (often absurd), a JSON-ish header, then data
        let dir = scratch("st-header");
        let mut b = len.to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(tail);
        read_all_ways(&dir, &b);
        // the same header with a correct length
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        read_all_ways(&dir, &b);
    }

    #[test]
    fn labels_csv_parser_survives_any_text(text in "(\u{feff})?([a-z0-9 ,\"_-]{0,12}\r?\n){0,12}") {
        let dir = scratch("csv");
        let p = fresh(&dir, "csv");
        std::fs::write(&p, &text).unwrap();
        if let Ok(names) = read_labels_csv(&p) {
            prop_assert!(names.iter().all(|n| !n.contains('\n')), "{names:?}");
        }
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn list_file_parser_survives_any_text(
        lines in proptest::collection::vec(
            "(a/v0|b/v1|a/v9|/abs|\\.\\./x|)( +| *\t)(-?[0-9]{0,20}|x)?( +(-?[0-9]{0,20}|z))?",
            0..6,
        ),
    ) {
        let root = frame_root();
        let list = fresh(&scratch("list"), "txt");
        std::fs::write(&list, lines.join("\n")).unwrap();
        let opts = FolderOptions { list_file: Some(list.clone()), ..Default::default() };
        if let Ok(ds) = Dataset::frame_folders(&root, &opts) {
            for i in 0..ds.len() {
                prop_assert!(ds.label(i) < ds.classes().len().max(1));
            }
        }
        let _ = std::fs::remove_file(&list);
    }

    #[test]
    fn frame_decoder_survives_damage(d in damage(), png in any::<bool>()) {
        let (bytes, ext) = if png { (valid_image(image::ImageFormat::Png), "png") } else { (valid_image(image::ImageFormat::Jpeg), "jpg") };
        let p = fresh(&scratch("frames"), ext);
        std::fs::write(&p, apply(&bytes, &d)).unwrap();
        if let Ok(f) = read_frame(&p) {
            prop_assert!(f.width > 0 && f.height > 0);
            prop_assert_eq!(f.data.len(), f.width * f.height * 3);
        }
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn clips_load_or_fail_cleanly_from_damaged_frames(
        damages in proptest::collection::vec(proptest::option::of(damage()), 4),
    ) {
        // a video of 4 frames, some damaged: a clip with replaced frames and a warning, or an error
        let dir = fresh(&scratch("clips"), "d");
        std::fs::create_dir_all(&dir).unwrap();
        let good = valid_image(image::ImageFormat::Jpeg);
        for (k, d) in damages.iter().enumerate() {
            let b = d.as_ref().map_or(good.clone(), |d| apply(&good, d));
            std::fs::write(dir.join(format!("img_{:05}.jpg", k + 1)), b).unwrap();
        }
        if let Ok(ds) = Dataset::open(&dir, &FolderOptions::default()) {
            let spec = ClipSpec {
                segments: 4, size: 8, resize_short: 0, train: false, clips_per_video: 1,
                crop: CropMode::Center, flip: false, norm: Normalization::Unit, layout: Layout::BCTHW,
            };
            if let Ok(clip) = load_clip(&ds, 0, &spec, 0) {
                prop_assert_eq!(clip.len(), 3 * 4 * 8 * 8);
                prop_assert!(clip.iter().all(|v| v.is_finite()));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A 12×10 image in `format`'s encoding.
fn valid_image(format: image::ImageFormat) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// ROOT/{a,b}/v*/img_00001.png, shared by the list-file cases.
fn frame_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = scratch("list-root");
        for v in ["a/v0", "b/v1"] {
            std::fs::create_dir_all(root.join(v)).unwrap();
            std::fs::write(
                root.join(v).join("img_00001.png"),
                valid_image(image::ImageFormat::Png),
            )
            .unwrap();
        }
        root
    })
    .clone()
}
