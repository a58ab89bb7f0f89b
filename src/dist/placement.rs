//! Where a process stands in a job: rank, world size and local rank, read from the variables the
//! launchers set.
//!
//! | launcher | rank | world size | local rank | also |
//! |---|---|---|---|---|
//! | torchrun (and PyTorch's `env://`) | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` (0 when unset) | `MASTER_ADDR`, `MASTER_PORT` |
//! | Open MPI `mpirun` (and `srun --mpi=pmix` of an Open MPI build) | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | |
//! | Slurm `srun` | `SLURM_PROCID` | `SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS` | `SLURM_LOCALID` | |
//!
//! When several are present the first row wins (torchrun run inside a Slurm allocation inherits
//! `SLURM_PROCID`; mpirun inside one inherits the batch step's Slurm variables), except that torchrun's
//! and Open MPI's variables must agree when both are set: each is set per process, so a disagreement
//! is a launch mistake (an exported `RANK`), reported as an error. A rank outside the world, a world of
//! 0, a local rank outside the world or a value that is not a number are errors naming the variable.

use crate::error::{Error, Result};

/// Which launcher's variables placed the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher variables: a world of one.
    None,
    Torchrun,
    OpenMpi,
    Slurm,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Launcher::None => "no launcher",
            Launcher::Torchrun => "torchrun (RANK/WORLD_SIZE)",
            Launcher::OpenMpi => "Open MPI (OMPI_COMM_WORLD_*)",
            Launcher::Slurm => "Slurm srun (SLURM_PROCID/SLURM_NTASKS)",
        }
    }
}

/// A process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub launcher: Launcher,
    /// torchrun's rendezvous `MASTER_ADDR`:`MASTER_PORT`, when set.
    pub master: Option<(String, u16)>,
}

impl Placement {
    /// A world of one process.
    pub fn single() -> Placement {
        Placement {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            launcher: Launcher::None,
            master: None,
        }
    }

    /// From this process's environment (see the module documentation).
    pub fn from_env() -> Result<Placement> {
        Placement::from_vars(|k| std::env::var(k).ok())
    }

    /// From the variables `var` returns (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Placement> {
        let number = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(s) => s.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::Distributed(format!("{name}={s:?} is not a non-negative integer"))
                }),
            }
        };
        // (rank, world, local rank) of one launcher; both rank and world or neither
        let triple = |launcher: Launcher,
                      rank: &str,
                      worlds: &[&str],
                      local: &str|
         -> Result<Option<Placement>> {
            let r = number(rank)?;
            let mut w = None;
            let mut w_name = worlds[0];
            for &name in worlds {
                if let Some(v) = number(name)? {
                    w = Some(v);
                    w_name = name;
                    break;
                }
            }
            let (r, w) = match (r, w) {
                (None, None) => return Ok(None),
                (Some(r), Some(w)) => (r, w),
                (Some(_), None) => {
                    return Err(Error::Distributed(format!(
                        "{rank} is set but {} is not: set both or neither",
                        worlds.join(" / ")
                    )))
                }
                (None, Some(_)) => {
                    return Err(Error::Distributed(format!(
                        "{w_name} is set but {rank} is not: set both or neither"
                    )))
                }
            };
            if w == 0 {
                return Err(Error::Distributed(format!(
                    "{w_name}=0: a world of no process"
                )));
            }
            if r >= w {
                return Err(Error::Distributed(format!(
                    "{rank}={r} is outside a world of {w_name}={w} (ranks 0..{w})"
                )));
            }
            let l = number(local)?.unwrap_or(0);
            if l >= w {
                return Err(Error::Distributed(format!(
                    "{local}={l} is not below the world size {w_name}={w}"
                )));
            }
            Ok(Some(Placement {
                rank: r,
                world_size: w,
                local_rank: l,
                launcher,
                master: None,
            }))
        };
        let torchrun = triple(Launcher::Torchrun, "RANK", &["WORLD_SIZE"], "LOCAL_RANK")?;
        let ompi = triple(
            Launcher::OpenMpi,
            "OMPI_COMM_WORLD_RANK",
            &["OMPI_COMM_WORLD_SIZE"],
            "OMPI_COMM_WORLD_LOCAL_RANK",
        )?;
        let slurm = triple(
            Launcher::Slurm,
            "SLURM_PROCID",
            &["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"],
            "SLURM_LOCALID",
        )?;
        if let (Some(t), Some(o)) = (&torchrun, &ompi) {
            if (t.rank, t.world_size) != (o.rank, o.world_size) {
                return Err(Error::Distributed(format!(
                    "conflicting launcher variables: RANK={} WORLD_SIZE={} but OMPI_COMM_WORLD_RANK={} \
                     OMPI_COMM_WORLD_SIZE={}; launch with one launcher (unset RANK/WORLD_SIZE under mpirun)",
                    t.rank, t.world_size, o.rank, o.world_size
                )));
            }
        }
        let mut p = torchrun
            .or(ompi)
            .or(slurm)
            .unwrap_or_else(Placement::single);
        if p.launcher == Launcher::Torchrun {
            p.master = match (var("MASTER_ADDR"), number("MASTER_PORT")?) {
                (Some(addr), Some(port)) => {
                    let port = u16::try_from(port).map_err(|_| {
                        Error::Distributed(format!(
                            "MASTER_PORT={port} is not a TCP port (1..65535)"
                        ))
                    })?;
                    Some((addr, port))
                }
                (None, None) => None,
                _ => {
                    return Err(Error::Distributed(
                        "MASTER_ADDR and MASTER_PORT: set both or neither".into(),
                    ))
                }
            };
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn place(vars: &[(&str, &str)]) -> Result<Placement> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Placement::from_vars(|k| m.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        place(vars).expect_err("must be an error").to_string()
    }

    #[test]
    fn no_launcher_is_a_world_of_one() {
        assert_eq!(place(&[]).unwrap(), Placement::single());
    }

    #[test]
    fn torchrun_variables() {
        let p = place(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!((p.rank, p.world_size, p.local_rank), (5, 8, 1));
        assert_eq!(p.launcher, Launcher::Torchrun);
        assert_eq!(p.master, Some(("10.0.0.1".into(), 29500)));
        // LOCAL_RANK defaults to 0 (PyTorch's env:// does not need it)
        let p = place(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap();
        assert_eq!((p.local_rank, p.master), (0, None));
    }

    #[test]
    fn open_mpi_variables() {
        let p = place(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .unwrap();
        assert_eq!((p.rank, p.world_size, p.local_rank), (3, 4, 1));
        assert_eq!(p.launcher, Launcher::OpenMpi);
    }

    #[test]
    fn slurm_variables_prefer_the_step_task_count() {
        let p = place(&[
            ("SLURM_PROCID", "2"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "2"),
        ])
        .unwrap();
        assert_eq!((p.rank, p.world_size, p.local_rank), (2, 16, 2));
        assert_eq!(p.launcher, Launcher::Slurm);
        let p = place(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_STEP_NUM_TASKS", "4"),
        ])
        .unwrap();
        assert_eq!(p.world_size, 4);
    }

    #[test]
    fn precedence_torchrun_then_open_mpi_then_slurm() {
        // mpirun inside a Slurm batch step: the batch step's SLURM_PROCID=0 is inherited by every rank
        let p = place(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ])
        .unwrap();
        assert_eq!((p.launcher, p.rank), (Launcher::OpenMpi, 1));
        let p = place(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ])
        .unwrap();
        assert_eq!((p.launcher, p.rank), (Launcher::Torchrun, 3));
        // agreeing torchrun and Open MPI variables are fine
        let p = place(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ])
        .unwrap();
        assert_eq!(p.launcher, Launcher::Torchrun);
    }

    #[test]
    fn invalid_and_conflicting_values_are_errors_naming_the_variable() {
        let e = err(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ]);
        assert!(
            e.contains("conflicting") && e.contains("OMPI_COMM_WORLD_RANK=1"),
            "{e}"
        );
        let e = err(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = err(&[("RANK", "-1"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK=\"-1\""), "{e}");
        let e = err(&[("RANK", "2"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK=2 is outside"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "0")]);
        assert!(e.contains("WORLD_SIZE=0"), "{e}");
        let e = err(&[("RANK", "0")]);
        assert!(e.contains("WORLD_SIZE is not"), "{e}");
        let e = err(&[("OMPI_COMM_WORLD_SIZE", "2")]);
        assert!(e.contains("OMPI_COMM_WORLD_RANK is not"), "{e}");
        let e = err(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "2"),
        ]);
        assert!(e.contains("SLURM_LOCALID=2"), "{e}");
        let e = err(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]);
        assert!(e.contains("MASTER_PORT=70000"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert!(e.contains("MASTER_ADDR and MASTER_PORT"), "{e}");
    }
}
