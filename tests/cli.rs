//! The `vidgrad` command line as a user runs it.

mod common;

use vidgrad::exec::Network;
use vidgrad::io::{load_safetensors, save_safetensors, StateDict};
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::Device;

use common::run_vidgrad as vidgrad;

#[test]
fn models_summary_and_graph() {
    let (ok, out, _) = vidgrad(&["models"]);
    assert!(ok && out.contains("eco-lite"));
    let (ok, out, err) = vidgrad(&[
        "summary",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,16,3,224,224",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Total params: 37,503,856") && out.contains("Forward mult-adds (G): 46.49"),
        "{out}"
    );
    let (ok, out, _) = vidgrad(&[
        "graph",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,4,3,64,64",
        "--classes",
        "5",
    ]);
    assert!(ok && out.starts_with("digraph") && out.contains("fc_final"));
    let (ok, _, err) = vidgrad(&["summary", "--model", "nope", "--input-shape", "1,2,3"]);
    assert!(!ok && err.contains("unknown model 'nope'"), "{err}");
    let (ok, _, err) = vidgrad(&[
        "summary",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,6,3,64,64",
    ]);
    assert!(!ok && err.contains("multiple of 4"), "{err}");
}

#[test]
fn forward_writes_the_networks_logits() {
    let dir = std::env::temp_dir().join(format!("vidgrad-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shape = [2, 4, 3, 64, 64];
    let opts = ModelOptions {
        classes: Some(5),
        ..Default::default()
    };
    let mut net = Network::new(
        models::build("eco-lite", &opts, &shape).unwrap(),
        Device::Cpu,
        0,
    )
    .unwrap();
    fill::fill_network(&net, 9).unwrap();
    let x = fill::fill_input(9, &shape, Device::Cpu).unwrap();
    let (w, i, o) = (
        dir.join("w.safetensors"),
        dir.join("x.safetensors"),
        dir.join("y.safetensors"),
    );
    save_safetensors(&w, &net.state_dict(), None).unwrap();
    save_safetensors(
        &i,
        &[("input".to_string(), x.clone())]
            .into_iter()
            .collect::<StateDict>(),
        None,
    )
    .unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = [
        "forward",
        "--model",
        "eco-lite",
        "--classes",
        "5",
        "--weights",
        &s(&w),
        "--input",
        &s(&i),
        "--output",
        &s(&o),
        "--device",
        "cpu",
    ];
    let (ok, _, err) = vidgrad(&args);
    assert!(ok, "{err}");
    net.eval();
    let want = vidgrad::no_grad(|| net.forward(&[&x]))
        .unwrap()
        .to_vec()
        .unwrap();
    let (got, _) = load_safetensors(&o, Device::Cpu).unwrap();
    assert_eq!(got["logits"].shape(), &[2, 5]);
    assert_eq!(got["logits"].to_vec().unwrap(), want);

    // Weights missing a key: an error naming it.
    let mut sd = net.state_dict();
    sd.remove("fc_final.bias");
    save_safetensors(&w, &sd, None).unwrap();
    let (ok, _, err) = vidgrad(&args);
    assert!(!ok && err.contains("fc_final.bias"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
