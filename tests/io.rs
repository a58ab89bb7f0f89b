//! Weight I/O: safetensors round trips, atomic writes, strict state-dict checks, dtype handling and
//! interop with files written by PyTorch through tools/convert_checkpoint.py
//! (fixtures from tools/reference/gen_io_fixture.py).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use vidgrad::io::{self, StateDict};
use vidgrad::{Error, Tensor};

use common::device;

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("io-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(name)
}

fn t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, seed, device()).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A small network's worth of PyTorch-named tensors.
fn sample_state_dict() -> StateDict {
    let mut sd = StateDict::new();
    sd.insert("conv1.weight".into(), t(&[4, 3, 3, 3, 3], 1));
    sd.insert("bn1.weight".into(), t(&[4], 2));
    sd.insert("bn1.bias".into(), t(&[4], 3));
    sd.insert("bn1.running_mean".into(), t(&[4], 4));
    sd.insert(
        "bn1.running_var".into(),
        Tensor::rand_uniform(&[4], 0.5, 2.0, 5, device()).unwrap(),
    );
    sd.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::from_slice(&[7.0], &[1], device()).unwrap(),
    );
    sd.insert("fc.weight".into(), t(&[10, 4], 6));
    sd.insert("fc.bias".into(), t(&[10], 7));
    sd
}

fn assert_same(a: &StateDict, b: &StateDict) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "names"
    );
    for (k, x) in a {
        let y = &b[k];
        assert_eq!(x.shape(), y.shape(), "{k}: shape");
        let (xv, yv) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&xv), bits(&yv), "{k}: values");
    }
}

fn message(e: &Error) -> String {
    e.to_string()
}

#[test]
fn round_trip_keeps_names_shapes_values_and_metadata() {
    let dir = scratch("round_trip");
    let path = dir.join("w.safetensors");
    let sd = sample_state_dict();
    let meta = BTreeMap::from([
        ("arch".to_string(), "tiny".to_string()),
        ("epoch".to_string(), "3".to_string()),
    ]);
    io::save_safetensors(&path, &sd, Some(&meta)).unwrap();
    let (back, back_meta) = io::load_safetensors(&path, device()).unwrap();
    assert_same(&sd, &back);
    assert_eq!(back_meta, meta);
    assert_eq!(files_in(&dir), ["w.safetensors"], "no temporary file left");

    // Equal state dicts give identical bytes (sorted header, fixed layout).
    let again = dir.join("again.safetensors");
    io::save_safetensors(&again, &back, Some(&meta)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), fs::read(&again).unwrap());

    // No metadata: an empty map comes back.
    io::save_safetensors(&path, &sd, None).unwrap();
    assert!(io::load_safetensors(&path, device()).unwrap().1.is_empty());
}

#[test]
fn num_batches_tracked_is_written_as_0d_int64_and_read_back_exactly() {
    let dir = scratch("counter");
    let path = dir.join("bn.safetensors");
    let mut sd = StateDict::new();
    // 2^24 + 2: beyond f32's contiguous integers but representable, written exactly as int64.
    let big = 16_777_218.0f32;
    sd.insert(
        "layer1.0.bn1.num_batches_tracked".into(),
        Tensor::from_slice(&[big], &[1], device()).unwrap(),
    );
    sd.insert("layer1.0.bn1.weight".into(), t(&[3], 1));
    io::save_safetensors(&path, &sd, None).unwrap();

    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let c = st.tensor("layer1.0.bn1.num_batches_tracked").unwrap();
    assert_eq!(c.dtype(), Dtype::I64);
    assert!(c.shape().is_empty(), "PyTorch's shape [] ({:?})", c.shape());
    assert_eq!(i64::from_le_bytes(c.data().try_into().unwrap()), 16_777_218);
    assert_eq!(
        st.tensor("layer1.0.bn1.weight").unwrap().dtype(),
        Dtype::F32
    );

    let (back, _) = io::load_safetensors(&path, device()).unwrap();
    let c = &back["layer1.0.bn1.num_batches_tracked"];
    assert_eq!(c.shape(), [1], "0-d loads as [1]");
    assert_eq!(c.item().unwrap(), big);

    // A counter must hold whole numbers; the error names the key, and nothing is written.
    sd.insert(
        "bn.num_batches_tracked".into(),
        Tensor::from_slice(&[2.5], &[1], device()).unwrap(),
    );
    let e = io::save_safetensors(dir.join("bad.safetensors"), &sd, None).unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("bn.num_batches_tracked") && m.contains("bad.safetensors"),
        "{m}"
    );
    assert_eq!(files_in(&dir), ["bn.safetensors"]);
}

#[test]
fn atomic_write_replaces_whole_files_and_keeps_them_on_failure() {
    let dir = scratch("atomic");
    let path = dir.join("ckpt.safetensors");
    let sd = sample_state_dict();
    io::save_safetensors(&path, &sd, None).unwrap();
    let old = fs::read(&path).unwrap();

    // Overwrite: the new contents, and no temporary file left behind.
    let mut sd2 = sd.clone();
    sd2.insert("extra.weight".into(), t(&[2, 2], 9));
    io::save_safetensors(&path, &sd2, None).unwrap();
    assert_same(&sd2, &io::load_safetensors(&path, device()).unwrap().0);
    assert_eq!(files_in(&dir), ["ckpt.safetensors"]);
    io::save_safetensors(&path, &sd, None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), old);

    // Parent directory missing: the error names the path and nothing is created.
    let nowhere = dir.join("no_such_dir").join("w.safetensors");
    let e = io::save_safetensors(&nowhere, &sd, None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(message(&e).contains(&nowhere.display().to_string()), "{e}");
    assert_eq!(files_in(&dir), ["ckpt.safetensors"]);

    // The rename fails (the target is a non-empty directory): the temporary file is removed and
    // the directory is untouched.
    let blocker = dir.join("blocker.safetensors");
    fs::create_dir(&blocker).unwrap();
    fs::write(blocker.join("keep"), b"keep").unwrap();
    let e = io::save_safetensors(&blocker, &sd, None).unwrap_err();
    assert!(message(&e).contains("blocker.safetensors"), "{e}");
    assert_eq!(files_in(&dir), ["blocker.safetensors", "ckpt.safetensors"]);
    assert_eq!(fs::read(blocker.join("keep")).unwrap(), b"keep");

    // Invalid data fails before the disk is touched: the existing checkpoint is intact.
    let mut bad = sd.clone();
    bad.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::from_slice(&[f32::NAN], &[1], device()).unwrap(),
    );
    assert!(io::save_safetensors(&path, &bad, None).is_err());
    assert_eq!(fs::read(&path).unwrap(), old);

    // A read-only directory (skipped where permissions are not enforced, e.g. as root).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.join("ro");
        fs::create_dir(&ro).unwrap();
        let target = ro.join("w.safetensors");
        io::save_safetensors(&target, &sd, None).unwrap();
        let before = fs::read(&target).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        if fs::write(ro.join("probe"), b"").is_ok() {
            println!("read-only directory not enforced here (root?): skipping that case");
            let _ = fs::remove_file(ro.join("probe"));
        } else {
            let e = io::save_safetensors(&target, &sd2, None).unwrap_err();
            assert!(message(&e).contains("w.safetensors"), "{e}");
            assert_eq!(fs::read(&target).unwrap(), before);
            assert_eq!(files_in(&ro), ["w.safetensors"]);
        }
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn strict_check_names_every_missing_unexpected_and_misshaped_key() {
    let expected: Vec<(String, Vec<usize>)> = vec![
        ("conv1.weight".into(), vec![4, 3, 3, 3, 3]),
        ("bn1.weight".into(), vec![4]),
        ("bn1.bias".into(), vec![4]),
        ("bn1.running_mean".into(), vec![4]),
        ("bn1.running_var".into(), vec![4]),
        ("bn1.num_batches_tracked".into(), vec![1]),
        ("fc.weight".into(), vec![400, 4]),
        ("fc.bias".into(), vec![400]),
        ("layer2.conv.weight".into(), vec![8, 4, 1, 1, 1]),
    ];
    let mut sd = sample_state_dict(); // fc has 10 classes, layer2 absent
    sd.remove("bn1.running_var");
    sd.insert("module.extra.weight".into(), t(&[2], 1));
    sd.insert("aux.bias".into(), t(&[3], 2));

    // The exact match passes, from any of the accepted forms.
    let good = sample_state_dict();
    let good_expected: Vec<(String, Vec<usize>)> = good
        .iter()
        .map(|(k, v)| (k.clone(), v.shape().to_vec()))
        .collect();
    assert!(io::check_state_dict(&good_expected, &good, true)
        .unwrap()
        .is_empty());
    assert!(io::check_state_dict(&good, &good, true).unwrap().is_empty());

    let e = io::check_state_dict(&expected, &sd, true).unwrap_err();
    let Error::StateDict(diff) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(diff.missing, ["bn1.running_var", "layer2.conv.weight"]);
    assert_eq!(diff.unexpected, ["aux.bias", "module.extra.weight"]);
    let mis: Vec<_> = diff.mismatched.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(mis, ["fc.bias", "fc.weight"]);
    let m = message(&e);
    println!("{m}");
    for line in [
        "missing     bn1.running_var",
        "missing     layer2.conv.weight",
        "unexpected  aux.bias",
        "unexpected  module.extra.weight",
        "mis-shaped  fc.bias: expected [400], found [10]",
        "mis-shaped  fc.weight: expected [400, 4], found [10, 4]",
    ] {
        assert!(
            m.lines().any(|l| l.trim() == line.trim()),
            "'{line}' not in:\n{m}"
        );
    }

    // Not strict: missing/unexpected are reported, not fatal; mis-shaped keys still are.
    let e = io::check_state_dict(&expected, &sd, false).unwrap_err();
    assert!(message(&e).contains("fc.weight"));
    let expected_ok: Vec<(String, Vec<usize>)> = expected
        .iter()
        .filter(|(k, _)| !k.starts_with("fc."))
        .cloned()
        .collect();
    let diff = io::check_state_dict(&expected_ok, &sd, false).unwrap();
    assert_eq!(diff.missing, ["bn1.running_var", "layer2.conv.weight"]);
    assert_eq!(
        diff.unexpected,
        ["aux.bias", "fc.bias", "fc.weight", "module.extra.weight"]
    );
}

#[test]
fn prefix_mismatch_gets_a_hint_and_renames_fix_it() {
    let model = sample_state_dict();
    let file: StateDict = model
        .iter()
        .map(|(k, v)| (format!("module.base_model.{k}"), v.clone()))
        .collect();
    let m = message(&io::check_state_dict(&model, &file, true).unwrap_err());
    assert!(m.contains("'module.base_model.'"), "{m}");

    let fixed = io::apply_renames(file, &[("module.base_model.", "")]).unwrap();
    assert!(io::check_state_dict(&model, &fixed, true)
        .unwrap()
        .is_empty());
}

#[test]
fn apply_renames_first_matching_rule_wins_and_collisions_fail() {
    let mut sd = StateDict::new();
    for k in [
        "module.base_model.conv1.weight",
        "module.new_fc.weight",
        "other.bias",
    ] {
        sd.insert(k.into(), t(&[2], 0));
    }
    let rules = [
        ("module.base_model.", ""),
        ("module.", ""),
        ("other.", "x."),
    ];
    let out = io::apply_renames(sd.clone(), &rules).unwrap();
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        ["conv1.weight", "new_fc.weight", "x.bias"]
    );

    sd.insert("conv1.weight".into(), t(&[2], 0));
    let e = io::apply_renames(sd, &rules).unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("'conv1.weight'") && m.contains("'module.base_model.conv1.weight'"),
        "{m}"
    );
}

#[test]
fn assign_and_load_into_copy_values_into_model_tensors() {
    let dir = scratch("load_into");
    let path = dir.join("w.safetensors");
    let src = sample_state_dict();
    io::save_safetensors(&path, &src, None).unwrap();

    // A "model": its own tensors under the same names, some requiring grad.
    let model: Vec<(String, Tensor)> = src
        .iter()
        .map(|(k, v)| {
            let z = Tensor::zeros(v.shape(), device()).unwrap();
            (
                k.clone(),
                if k.ends_with("weight") {
                    z.with_grad()
                } else {
                    z
                },
            )
        })
        .collect();
    assert!(io::load_into(&path, &model, true).unwrap().is_empty());
    for (k, v) in &model {
        assert_eq!(v.to_vec().unwrap(), src[k].to_vec().unwrap(), "{k}");
    }

    // A model with an extra tensor: strict fails naming file and key; non-strict fills the rest.
    let mut bigger = model.clone();
    bigger.push(("head.weight".into(), Tensor::zeros(&[3], device()).unwrap()));
    let m = message(&io::load_into(&path, &bigger, true).unwrap_err());
    assert!(
        m.contains(&path.display().to_string()) && m.contains("missing     head.weight"),
        "{m}"
    );
    let diff = io::load_into(&path, &bigger, false).unwrap();
    assert_eq!(diff.missing, ["head.weight"]);
}

#[test]
fn corrupted_or_missing_files_give_errors_naming_the_file() {
    let dir = scratch("corrupt");
    let good = dir.join("good.safetensors");
    io::save_safetensors(&good, &sample_state_dict(), None).unwrap();
    let bytes = fs::read(&good).unwrap();

    let mut header_lies = bytes.clone();
    header_lies[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let cases: [(&str, Vec<u8>); 5] = [
        ("empty.safetensors", vec![]),
        ("short.safetensors", b"abc".to_vec()),
        ("truncated.safetensors", bytes[..bytes.len() - 10].to_vec()),
        ("garbage.safetensors", {
            let mut g = 16u64.to_le_bytes().to_vec();
            g.extend_from_slice(b"{not json at all");
            g
        }),
        ("header_len.safetensors", header_lies),
    ];
    for (name, data) in cases {
        let p = dir.join(name);
        fs::write(&p, data).unwrap();
        let e = io::load_safetensors(&p, device()).unwrap_err();
        println!("{e}");
        assert!(matches!(e, Error::Safetensors { .. }), "{name}: {e:?}");
        assert!(message(&e).contains(name), "{name}: {e}");
    }

    let e = io::load_safetensors(dir.join("absent.safetensors"), device()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && message(&e).contains("absent.safetensors"));
}

/// Raw safetensors bytes written with the format crate (dtypes vidgrad itself never writes).
fn raw_file(path: &Path, entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = entries
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn unsupported_dtypes_and_ranks_name_file_and_key() {
    let dir = scratch("dtypes_bad");
    let p = dir.join("u8.safetensors");
    raw_file(&p, &[("mask.weight", Dtype::U8, vec![3], vec![1, 0, 1])]);
    let m = message(&io::load_safetensors(&p, device()).unwrap_err());
    assert!(
        m.contains("u8.safetensors") && m.contains("'mask.weight'") && m.contains("U8"),
        "{m}"
    );

    let p = dir.join("rank6.safetensors");
    raw_file(
        &p,
        &[("big.weight", Dtype::F32, vec![1, 1, 1, 1, 1, 2], vec![0; 8])],
    );
    let m = message(&io::load_safetensors(&p, device()).unwrap_err());
    assert!(
        m.contains("rank6.safetensors") && m.contains("'big.weight'") && m.contains("rank 6"),
        "{m}"
    );
}

fn json(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// Compare a loaded tensor with a fixture entry {dtype, shape, values}; 0-d loads as [1].
fn check_entry(key: &str, got: &Tensor, want: &Value) {
    let mut shape: Vec<usize> = common::usizes(&want["shape"]);
    if shape.is_empty() {
        shape = vec![1];
    }
    assert_eq!(got.shape(), shape, "{key}: shape");
    let want: Vec<f32> = want["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let got = got.to_vec().unwrap();
    assert_eq!(got.len(), want.len(), "{key}");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(a.to_bits() == b.to_bits(), "{key}[{i}]: {a} vs PyTorch {b}");
    }
}

#[test]
fn pytorch_dtypes_load_as_f32() {
    let (sd, meta) = io::load_safetensors(fixture("dtypes.safetensors"), device()).unwrap();
    let want = json("dtypes.json");
    let want = want.as_object().unwrap();
    assert_eq!(
        sd.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in want {
        check_entry(k, &sd[k], w);
    }
    assert_eq!(meta["format"], "pt");
}

#[test]
fn pytorch_converted_checkpoint_loads_and_saves_back_byte_identical() {
    let path = fixture("tiny_eco.safetensors");
    let (sd, meta) = io::load_safetensors(&path, device()).unwrap();
    let want = json("tiny_eco.json");
    let tensors = want["tensors"].as_object().unwrap();

    // Renamed by the converter: no DataParallel / ECO prefixes, the non-tensor entry skipped.
    assert_eq!(sd.len(), 15);
    assert_eq!(
        sd.keys().collect::<Vec<_>>(),
        tensors.keys().collect::<Vec<_>>()
    );
    assert!(sd.keys().all(|k| !k.starts_with("module.")));
    for (k, w) in tensors {
        check_entry(k, &sd[k], w);
        let dtype = w["dtype"].as_str().unwrap();
        let counter = io::is_counter_key(k);
        assert_eq!(dtype, if counter { "int64" } else { "float32" }, "{k}");
    }
    assert_eq!(sd["conv1.weight"].shape(), [4, 3, 3, 3]);
    assert_eq!(sd["res3a.weight"].shape(), [4, 4, 3, 1, 1]);
    assert_eq!(sd["bn1.num_batches_tracked"].item().unwrap(), 3.0);
    assert_eq!(sd["bn3.num_batches_tracked"].item().unwrap(), 3.0);
    let rv = sd["bn1.running_var"].to_vec().unwrap();
    assert!(
        rv.iter().all(|&v| v > 0.0 && v != 1.0),
        "running stats moved: {rv:?}"
    );
    assert_eq!(meta["source"], "tiny_eco.pth");
    assert_eq!(
        meta,
        serde_json::from_value(want["metadata"].clone()).unwrap()
    );

    // What vidgrad writes is exactly what the PyTorch-side converter wrote (I64 0-d counters,
    // layout, header), so PyTorch reads it back with the dtypes and shapes it expects.
    let dir = scratch("interop");
    let out = dir.join("tiny_eco.safetensors");
    io::save_safetensors(&out, &sd, Some(&meta)).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&path).unwrap());
}
