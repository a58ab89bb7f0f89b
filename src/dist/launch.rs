//! `--nproc-per-node N`: one command starts the N processes of a single-machine job, as torchrun's
//! standalone mode does.
//!
//! The processes must share an MPI world (the collective is MPI's), which only an MPI launcher can
//! make: so this process runs `mpirun -np N <this program> <its arguments without the flag>` and waits.
//! mpirun sets each child's placement (`OMPI_COMM_WORLD_*`), forwards their output, and when one child
//! fails it ends the others and names that rank; the trainer's own error line names it too
//! (`error: rank R of N: …`). Without mpirun on the PATH, or without the `mpi` feature, it is an error
//! saying so.

use std::ffi::OsString;
use std::process::Command;

use super::Placement;
use crate::error::{Error, Result};

/// Run this program's command line again as `n` local processes under mpirun, and wait for them.
/// `placement`: this process's own (`Placement::from_env`); a launched rank may not launch more.
pub fn run_local_processes(n: usize, placement: &Placement) -> Result<()> {
    if placement.world_size > 1 {
        return Err(Error::Distributed(format!(
            "--nproc-per-node {n}: {} already started this process as rank {} of {}; give \
             --nproc-per-node or use a launcher, not both",
            placement.launcher.name(),
            placement.rank,
            placement.world_size
        )));
    }
    if !cfg!(feature = "mpi") {
        return Err(Error::Distributed(format!(
            "--nproc-per-node {n} needs distributed training: rebuild with the cargo feature `mpi` \
             (`cargo build --release --features mpi`, with an MPI library such as Debian's \
             libopenmpi-dev; docs/DISTRIBUTED.md)"
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Distributed(format!("--nproc-per-node: this program's path: {e}")))?;
    let args = without_nproc_flag(std::env::args_os().skip(1));
    let mut mpirun = Command::new("mpirun");
    mpirun.arg("-np").arg(n.to_string()).arg(exe).args(args);
    let status = mpirun.status().map_err(|e| {
        Error::Distributed(format!(
            "--nproc-per-node {n} starts the processes with mpirun, which could not be run ({e}): \
             install Open MPI's mpirun (Debian: openmpi-bin) and put it on the PATH, or launch the \
             processes yourself (mpirun -np {n} …, srun; docs/DISTRIBUTED.md)"
        ))
    })?;
    if !status.success() {
        return Err(Error::Distributed(format!(
            "--nproc-per-node {n}: the job failed (mpirun: {status}); the failing rank is named \
             above"
        )));
    }
    Ok(())
}

/// `args` without `--nproc-per-node N` / `--nproc-per-node=N`.
fn without_nproc_flag(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = vec![];
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let s = a.to_string_lossy();
        if s == "--nproc-per-node" {
            skip_value = true;
        } else if !s.starts_with("--nproc-per-node=") {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_and_its_value_are_left_out_and_nothing_else() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let kept = without_nproc_flag(
            args(&[
                "train",
                "--nproc-per-node",
                "4",
                "--epochs",
                "2",
                "--nproc-per-node=2",
                "-q",
            ])
            .into_iter(),
        );
        assert_eq!(kept, args(&["train", "--epochs", "2", "-q"]));
    }

    #[test]
    fn inside_a_launched_job_it_is_an_error() {
        let p = Placement {
            rank: 0,
            world_size: 2,
            local_rank: 0,
            launcher: crate::dist::Launcher::Torchrun,
            master: None,
        };
        let e = run_local_processes(2, &p).unwrap_err().to_string();
        assert!(e.contains("not both") && e.contains("rank 0 of 2"), "{e}");
    }
}
