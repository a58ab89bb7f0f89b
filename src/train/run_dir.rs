//! The output folder of a training run (docs/TRAINING-OUTPUTS.md): one live run per folder, held by an
//! advisory lock that names its process; an earlier run is continued (`--resume`) or replaced
//! (`--overwrite`), never silently mixed with a new one; temporary files left by a killed run are
//! removed at start.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files a run writes into its folder.
pub const RUN_FILES: [&str; 5] = [
    "last.safetensors",
    "best.safetensors",
    "metrics.jsonl",
    "loss.png",
    "accuracy.png",
];

/// The lock file: held (flock) by the live run, holding its process id.
pub const LOCK_FILE: &str = "train.lock";

/// How a run treats what its folder already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: the folder must not hold an earlier run.
    New,
    /// A new run replacing the earlier one (its files are removed first).
    Overwrite,
    /// Continue the earlier run from its `last.safetensors`.
    Resume,
}

/// A locked run folder. The lock lasts as long as this value (and dies with the process, even on
/// SIGKILL, because the kernel drops flock locks with the last descriptor).
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl RunDir {
    /// Create and lock `path`, remove stale temporary files, then check or clear it for `start`.
    pub fn open(path: &Path, start: Start) -> Result<RunDir> {
        if start == Start::Resume && !path.is_dir() {
            return Err(nothing_to_resume(path, ""));
        }
        fs::create_dir_all(path).map_err(io_err(path))?;
        let lock = take_lock(path)?;
        let dir = RunDir {
            path: path.to_path_buf(),
            _lock: lock,
        };
        let stale = dir.remove_stale_temporaries()?;
        if !stale.is_empty() {
            eprintln!(
                "removed {} temporary file(s) of an interrupted run in {}: {}",
                stale.len(),
                path.display(),
                stale.join(", ")
            );
        }
        let existing = dir.existing_files();
        match start {
            Start::New if !existing.is_empty() => {
                return Err(Error::arg(
                    "train",
                    format!(
                        "{} holds an earlier run ({}): pass --resume to continue it, --overwrite to replace it, or choose another --out",
                        path.display(),
                        existing.join(", ")
                    ),
                ))
            }
            Start::New => {}
            Start::Overwrite => {
                for name in &existing {
                    let f = path.join(name);
                    fs::remove_file(&f).map_err(io_err(&f))?;
                }
            }
            Start::Resume if !dir.last().exists() => {
                let why = if stale.iter().any(|s| s.starts_with(".last.safetensors")) {
                    " (a killed run left only an unfinished one, removed above)"
                } else {
                    ""
                };
                return Err(nothing_to_resume(path, why));
            }
            Start::Resume => {}
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last(&self) -> PathBuf {
        self.path.join("last.safetensors")
    }

    pub fn best(&self) -> PathBuf {
        self.path.join("best.safetensors")
    }

    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    /// The run files present, by name.
    pub fn existing_files(&self) -> Vec<&'static str> {
        RUN_FILES
            .into_iter()
            .filter(|f| self.path.join(f).exists())
            .collect()
    }

    /// Remove the temporary files `crate::io::write_atomic` leaves when the process dies mid-write
    /// (`.<run file>.tmp-<pid>-<n>`). Only the lock holder writes here, so every one is stale.
    fn remove_stale_temporaries(&self) -> Result<Vec<String>> {
        let mut removed = vec![];
        for entry in fs::read_dir(&self.path).map_err(io_err(&self.path))? {
            let entry = entry.map_err(io_err(&self.path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_ours = RUN_FILES
                .iter()
                .any(|f| name.starts_with(&format!(".{f}.tmp-")));
            if is_ours {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                removed.push(name);
            }
        }
        removed.sort();
        Ok(removed)
    }
}

/// The error of `--resume` on a folder without `last.safetensors`; `why` adds a reason.
pub fn nothing_to_resume(dir: &Path, why: &str) -> Error {
    let has_run = RUN_FILES.iter().any(|f| dir.join(f).exists());
    Error::arg(
        "train",
        format!(
            "--resume: {} has no last.safetensors{why}: nothing to resume; start a new run without --resume{}",
            dir.display(),
            if has_run { " (with --overwrite to replace what is there)" } else { "" }
        ),
    )
}

/// Fail, naming the process, when another live run holds `dir`'s lock (a probe for messages that
/// come before a run takes the lock; the lock itself is taken by [`RunDir::open`]).
pub fn check_not_in_use(dir: &Path) -> Result<()> {
    if dir.join(LOCK_FILE).exists() {
        take_lock(dir)?;
    }
    Ok(())
}

/// Take the folder's lock without waiting, then write this process's id into the lock file; when
/// another process holds it, the error names that process.
fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io_err(&path)(e));
        }
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "a process that is just starting".to_string(),
            pid => format!("process {pid}"),
        };
        return Err(Error::arg(
            "train",
            format!(
                "{} is in use by another training run ({holder}, lock {}): wait for it to finish, stop it, or choose another --out",
                dir.display(),
                path.display()
            ),
        ));
    }
    let written = (|| {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.flush()
    })();
    written.map_err(io_err(&path))?;
    Ok(f)
}
