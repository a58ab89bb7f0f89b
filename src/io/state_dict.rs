//! Matching a state dict against a model: the strict-load check, copying values in, prefix renames.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use super::{load_safetensors, StateDict};
use crate::{Device, Error, Result, Tensor};

/// An expected entry: a name and a shape. Implemented for `(name, Vec<usize>)`, `(name, &[usize])`,
/// `(name, Tensor)`, `(name, &Tensor)` (name: anything `AsRef<str>`) and references to them, so a
/// `&[(String, Vec<usize>)]`, a `&Vec<(String, Tensor)>` or a `&StateDict` can be passed as is.
pub trait NamedShape {
    fn name(&self) -> &str;
    fn shape(&self) -> &[usize];
}

/// A named tensor that values can be copied into (see [`assign_state_dict`]).
pub trait NamedTensor: NamedShape {
    fn tensor(&self) -> &Tensor;
}

impl<K: AsRef<str>> NamedShape for (K, Vec<usize>) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
}
impl<K: AsRef<str>> NamedShape for (K, &[usize]) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn shape(&self) -> &[usize] {
        self.1
    }
}
impl<K: AsRef<str>> NamedShape for (K, Tensor) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn shape(&self) -> &[usize] {
        self.1.shape()
    }
}
impl<K: AsRef<str>> NamedShape for (K, &Tensor) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn shape(&self) -> &[usize] {
        self.1.shape()
    }
}
impl<T: NamedShape + ?Sized> NamedShape for &T {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn shape(&self) -> &[usize] {
        (**self).shape()
    }
}
impl<K: AsRef<str>> NamedTensor for (K, Tensor) {
    fn tensor(&self) -> &Tensor {
        &self.1
    }
}
impl<K: AsRef<str>> NamedTensor for (K, &Tensor) {
    fn tensor(&self) -> &Tensor {
        self.1
    }
}
impl<T: NamedTensor + ?Sized> NamedTensor for &T {
    fn tensor(&self) -> &Tensor {
        (**self).tensor()
    }
}

/// A key whose shape in the state dict differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// How a state dict differs from a model's expected keys; each list is in name order.
/// [`Error::StateDict`] carries one, and its message lists every key, one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDictDiff {
    /// The file the state dict came from, when known.
    pub source: Option<String>,
    /// Expected by the model, absent from the state dict.
    pub missing: Vec<String>,
    /// In the state dict, unknown to the model.
    pub unexpected: Vec<String>,
    /// In both, with different shapes.
    pub mismatched: Vec<ShapeMismatch>,
}

impl StateDictDiff {
    /// No missing, unexpected or mis-shaped key.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// A common prefix that separates unexpected keys from missing ones (`module.`), if any.
    fn prefix_hint(&self) -> Option<String> {
        let missing: BTreeSet<&str> = self.missing.iter().map(String::as_str).collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut count = |long: &str, short: &str, add: bool| {
            let p = &long[..long.len() - short.len()];
            if p.ends_with('.') {
                let k = if add {
                    format!("+{p}")
                } else {
                    format!("-{p}")
                };
                *counts.entry(k).or_default() += 1;
            }
        };
        for u in &self.unexpected {
            for m in &missing {
                if u.len() > m.len() && u.ends_with(m) {
                    count(u, m, false);
                } else if m.len() > u.len() && m.ends_with(u.as_str()) {
                    count(m, u, true);
                }
            }
        }
        let (k, n) = counts.into_iter().max_by_key(|(_, n)| *n)?;
        let (p, what) = if let Some(p) = k.strip_prefix('-') {
            (p, "carry the extra prefix")
        } else {
            (&k[1..], "lack the prefix")
        };
        Some(format!(
            "hint: {n} key(s) of the file {what} '{p}'; rename with vidgrad::io::apply_renames \
             or tools/convert_checkpoint.py --rename"
        ))
    }
}

impl fmt::Display for StateDictDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "state dict from {s} does not match the model")?,
            None => write!(f, "state dict does not match the model")?,
        }
        write!(
            f,
            ": {} missing, {} unexpected, {} mis-shaped key(s)",
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )?;
        for k in &self.missing {
            write!(f, "\n  missing     {k}")?;
        }
        for k in &self.unexpected {
            write!(f, "\n  unexpected  {k}")?;
        }
        for m in &self.mismatched {
            write!(
                f,
                "\n  mis-shaped  {}: expected {:?}, found {:?}",
                m.key, m.expected, m.found
            )?;
        }
        if let Some(hint) = self.prefix_hint() {
            write!(f, "\n  {hint}")?;
        }
        Ok(())
    }
}

/// Compare a state dict with a model's expected names and shapes.
///
/// Strict: any missing, unexpected or mis-shaped key is an [`Error::StateDict`] listing all of them.
/// Not strict (PyTorch's `strict=False`): missing and unexpected keys are allowed and returned in
/// the diff, but a mis-shaped key is still an error. `expected` can be a model's `&StateDict`, a
/// `&[(String, Vec<usize>)]`, a `&Vec<(String, Tensor)>`, ... (see [`NamedShape`]).
pub fn check_state_dict<I>(expected: I, found: &StateDict, strict: bool) -> Result<StateDictDiff>
where
    I: IntoIterator,
    I::Item: NamedShape,
{
    let mut diff = StateDictDiff::default();
    let mut seen = BTreeSet::new();
    for e in expected {
        let name = e.name();
        if !seen.insert(name.to_string()) {
            continue;
        }
        match found.get(name) {
            None => diff.missing.push(name.to_string()),
            Some(t) if t.shape() != e.shape() => diff.mismatched.push(ShapeMismatch {
                key: name.to_string(),
                expected: e.shape().to_vec(),
                found: t.shape().to_vec(),
            }),
            Some(_) => {}
        }
    }
    diff.missing.sort();
    diff.mismatched.sort_by(|a, b| a.key.cmp(&b.key));
    diff.unexpected = found
        .keys()
        .filter(|k| !seen.contains(*k))
        .cloned()
        .collect();
    if !diff.mismatched.is_empty() || (strict && !diff.is_empty()) {
        return Err(Error::StateDict(Box::new(diff)));
    }
    Ok(diff)
}

/// Check `sd` against `targets` ([`check_state_dict`]), then copy every matching tensor into its
/// target in place (on the target's device). Returns the diff (empty when strict).
pub fn assign_state_dict<I>(targets: I, sd: &StateDict, strict: bool) -> Result<StateDictDiff>
where
    I: IntoIterator,
    I::Item: NamedTensor,
{
    let targets: Vec<I::Item> = targets.into_iter().collect();
    let diff = check_state_dict(&targets, sd, strict)?;
    for t in &targets {
        if let Some(src) = sd.get(t.name()) {
            t.tensor().assign(&src.to_device(t.tensor().device())?)?;
        }
    }
    Ok(diff)
}

/// [`load_safetensors`] then [`assign_state_dict`]; a mismatch error names the file.
pub fn load_into<I>(path: impl AsRef<Path>, targets: I, strict: bool) -> Result<StateDictDiff>
where
    I: IntoIterator,
    I::Item: NamedTensor,
{
    let path = path.as_ref();
    let (sd, _) = load_safetensors(path, Device::Cpu)?;
    assign_state_dict(targets, &sd, strict).map_err(|e| match e {
        Error::StateDict(mut d) => {
            d.source = Some(path.display().to_string());
            Error::StateDict(d)
        }
        e => e,
    })
}

/// Rename keys by prefix: for each key the first `(from, to)` whose `from` starts it has `from`
/// replaced by `to` (`("module.base_model.", "")` strips ECO's DataParallel prefix); other keys stay.
/// Two keys that end up with one name are an error naming both.
pub fn apply_renames<A, B>(sd: StateDict, renames: &[(A, B)]) -> Result<StateDict>
where
    A: AsRef<str>,
    B: AsRef<str>,
{
    let mut out = StateDict::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (key, t) in sd {
        let new = renames
            .iter()
            .find_map(|(from, to)| {
                key.strip_prefix(from.as_ref())
                    .map(|rest| format!("{}{rest}", to.as_ref()))
            })
            .unwrap_or_else(|| key.clone());
        if let Some(other) = origin.get(&new) {
            return Err(Error::InvalidArgument {
                op: "apply_renames",
                msg: format!("keys '{other}' and '{key}' would both be renamed to '{new}'"),
            });
        }
        origin.insert(new.clone(), key);
        out.insert(new, t);
    }
    Ok(out)
}
