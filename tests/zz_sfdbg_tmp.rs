use vidgrad::exec::Network;
use vidgrad::models::{self, ModelOptions};
use vidgrad::Device;
#[test]
#[ignore]
fn dump() {
    let d = Device::Cpu;
    let (x, _) = vidgrad::io::load_safetensors("/tmp/sfdbg/x.safetensors", d).unwrap();
    let x = &x["input"];
    let mut opts = ModelOptions { classes: Some(400), dropout: Some(0.0), ..Default::default() };
    let arch = std::env::var("ARCH").unwrap();
    opts.extra.insert("preset".into(), arch);
    opts.extra.insert("nonlocal".into(), "true".into());
    let g = models::build("c2d-nl-r50", &opts, x.shape()).unwrap();
    let mut net = Network::new(g, d, 0).unwrap();
    let (sd, _) = vidgrad::io::load_safetensors("/tmp/sfdbg/w.safetensors", d).unwrap();
    net.load_state_dict(&sd, true).unwrap();
    net.eval();
    let names: Vec<String> = std::env::var("RETAIN").unwrap().split(',').map(String::from).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let (y, vals) = vidgrad::no_grad(|| net.forward_with(&[x], &refs)).unwrap();
    let mut out: vidgrad::io::StateDict = vals.into_iter().collect();
    out.insert("logits".into(), y);
    vidgrad::io::save_safetensors("/tmp/sfdbg/acts.safetensors", &out, None).unwrap();
}
