//! vidgrad: a from-scratch deep-learning engine for video classification.
//!
//! Layers, from the hardware up: [`backend`] (one trait, implemented by the CPU backend and, next, CUDA),
//! [`tensor`] (shapes and storage on a device), [`ops`] (each op family's shape rules, forward and
//! backward), [`autograd`] (the tape).

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod exec;
pub mod explain;
pub mod graph;
pub mod io;
pub mod math_mode;
pub mod models;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod train;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
