//! Train ECO-Lite: `cargo run --release --example train_eco`.
//!
//! The model zoo, the data pipeline and the trainer are not in this version yet (see README "Status");
//! until they are, this example says so and exits with an error instead of pretending to train.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "train_eco needs the ECO-Lite model, the data pipeline and the trainer, which are not \
         implemented yet in this version of vidgrad; the engine core (ops + autograd) is — see README"
    )
}
