//! Crash-safe file replacement: write a temporary file next to the target, fsync it, rename it over
//! the target. Readers see the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A test hook: `VIDGRAD_TEST_WRITE_PAUSE_MS=N` makes every atomic write pause N ms halfway through
/// the temporary file and again before the rename, so that a test's SIGKILL can land inside a write.
fn test_write_pause() -> impl Fn() {
    let ms = std::env::var("VIDGRAD_TEST_WRITE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    move || {
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

/// Replace `path` with `bytes` atomically: a temporary file in the same directory
/// (`.<name>.tmp-<pid>-<n>`) is written, fsynced and renamed over `path`, then the directory is
/// fsynced. On any error the temporary file is removed and an existing `path` is left untouched;
/// the error names `path`.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let io_err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));

    let pause = test_write_pause();
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        f.write_all(head)?;
        pause();
        f.write_all(tail)?;
        f.sync_all()?;
        drop(f);
        pause();
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Make the rename itself durable. Best effort: some platforms cannot open or sync a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
