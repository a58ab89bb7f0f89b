//! The library's error type. Every fallible call returns [`Result`]; an invalid call names the op and
//! the shapes involved instead of panicking.

use crate::tensor::DType;

/// Everything that can go wrong inside vidgrad.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the op: `op` is the op's name, `msg` gives the shapes.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// An argument outside its domain (a negative probability, a label out of range, ...).
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    /// The op does not support the tensor's dtype yet.
    #[error("{op}: dtype {dtype:?} is not supported")]
    DType { op: &'static str, dtype: DType },

    /// Tensors on different devices were combined, or a device is not available.
    #[error("device error: {0}")]
    Device(String),

    /// Autograd misuse: backward from a non-scalar, from a tensor that does not require grad, ...
    #[error("autograd: {0}")]
    Autograd(String),

    /// An op of a network graph failed (at build time: a shape error; at run time: any error).
    #[error("graph node '{node}': {source}")]
    Node {
        node: String,
        #[source]
        source: Box<Error>,
    },

    /// A value that must be finite is not: non-finite logits, or what `--check-finite`
    /// ([`crate::exec::Network::set_check_finite`]) found.
    #[error("{0}")]
    NonFinite(String),

    /// Distributed training: launcher variables, a collective, ranks that disagree (docs/DISTRIBUTED.md).
    #[error("distributed: {0}")]
    Distributed(String),

    /// Reading or writing a safetensors file.
    #[error("safetensors {path}: {msg}")]
    Safetensors { path: String, msg: String },

    /// A state dict that does not fit a model: every missing, unexpected and mis-shaped key, by name.
    #[error("{0}")]
    StateDict(Box<crate::io::StateDictDiff>),

    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A data source that cannot be used: a missing or unreadable file, a corrupt frame, a bad list or
    /// labels file, a missing ffmpeg. `path` names the file or folder.
    #[error("data {path}: {msg}")]
    Data { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// How a command-line program ends: an error prints as one line with its causes (`error: …: …`) and
/// exit status 1 — a user error is not a crash, so no backtrace even under `RUST_BACKTRACE=1` (panics,
/// real bugs, still print theirs). `VIDGRAD_BACKTRACE=1` prints the error's debug form, with the
/// backtrace captured when `RUST_BACKTRACE=1` is set too.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if std::env::var("VIDGRAD_BACKTRACE").is_ok_and(|v| v == "1") {
                eprintln!("error: {e:?}");
            } else {
                eprintln!("error: {}", chain_message(&e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line, `outer: cause: …`, leaving out a cause whose text the line
/// already ends with (this crate's errors that wrap another, e.g. `graph node 'x': …`, show it in
/// their own message).
pub fn chain_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if msg.ends_with(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub(crate) fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}

/// Return early with a shape error: `shape_bail!("conv", "x {:?} vs w {:?}", a, b)`.
macro_rules! shape_bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::error::Error::shape($op, format!($($arg)*)))
    };
}
/// Return early with an invalid-argument error.
macro_rules! arg_bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::error::Error::arg($op, format!($($arg)*)))
    };
}
pub(crate) use arg_bail;
pub(crate) use shape_bail;
