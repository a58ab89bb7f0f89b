//! A TCP rendezvous that hands rank 0's bytes (the NCCL unique id) to every other rank, for jobs
//! that have no MPI communicator to share it over (torchrun's `MASTER_ADDR`/`MASTER_PORT`).
//!
//! Rank 0 listens on the address and port; every other rank connects (retrying while rank 0 is not
//! listening yet), says who it is (`HELLO`: magic, protocol version, rank, world size) and receives
//! either the bytes or rank 0's reason for refusing it. Rank 0 returns when every rank 1..world has
//! been served once. Both sides give up after the timeout (the watchdog's `VIDGRAD_DIST_TIMEOUT`)
//! with an error naming the address, the port and the ranks concerned: a rank that never shows up
//! never hangs the job. Plain `std::net`; the peers are trusted (the job's own processes), the checks
//! catch misconfigured launches (a wrong world size, a rank twice, something else on the port).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"VGRZ";
const VERSION: u32 = 1;
/// Rank 0's answer: the payload follows.
const OK: u8 = 0;
/// Rank 0's answer: a UTF-8 reason follows (length-prefixed).
const REFUSED: u8 = 1;
/// The most bytes a payload or reason may have (the NCCL id has 128).
const MAX_LEN: u32 = 1 << 16;
/// How long a connected peer may take to send or answer one message.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the rendezvous happens and who takes part.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    pub addr: String,
    pub port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub timeout: Duration,
}

impl Rendezvous {
    fn at(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    fn err(&self, what: String) -> Error {
        Error::Distributed(format!(
            "TCP rendezvous at {} (rank {} of {}): {what}",
            self.at(),
            self.rank,
            self.world_size
        ))
    }

    /// Rank 0: serve `payload` to every other rank and return it; other ranks: receive rank 0's.
    pub fn share(&self, payload: Option<&[u8]>) -> Result<Vec<u8>> {
        if self.rank >= self.world_size {
            return Err(self.err("the rank is outside the world".into()));
        }
        match (self.rank, payload) {
            (0, Some(p)) => self.serve(p).map(|_| p.to_vec()),
            (0, None) => Err(self.err("rank 0 has nothing to share".into())),
            (_, _) => self.join(),
        }
    }

    fn resolve(&self) -> Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = self
            .at()
            .to_socket_addrs()
            .map_err(|e| self.err(format!("cannot resolve the address: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(self.err("the address resolves to nothing".into()));
        }
        Ok(addrs)
    }

    /// Rank 0: listen, and answer every rank 1..world once.
    fn serve(&self, payload: &[u8]) -> Result<()> {
        let addrs = self.resolve()?;
        let listener = TcpListener::bind(&addrs[..])
            .map_err(|e| self.err(format!("rank 0 cannot listen: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| self.err(format!("listener: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        let mut served = vec![false; self.world_size];
        served[0] = true;
        while served.iter().any(|s| !s) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let r = self.answer(stream, peer, payload, &served)?;
                    served[r] = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<String> = (0..self.world_size)
                            .filter(|&r| !served[r])
                            .map(|r| r.to_string())
                            .collect();
                        return Err(self.err(format!(
                            "rank(s) {} did not connect within {:.1} s (VIDGRAD_DIST_TIMEOUT); \
                             check that every rank was started with the same MASTER_ADDR, \
                             MASTER_PORT and WORLD_SIZE",
                            missing.join(", "),
                            self.timeout.as_secs_f64()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.err(format!("accept: {e}"))),
            }
        }
        Ok(())
    }

    /// Read one peer's hello and answer it; the peer's rank. A peer that says it belongs to another
    /// world, or is a rank `served` already, is refused (told why) and is an error here too: the job
    /// is misconfigured.
    fn answer(
        &self,
        mut s: TcpStream,
        peer: SocketAddr,
        payload: &[u8],
        served: &[bool],
    ) -> Result<usize> {
        let io = |e: std::io::Error| self.err(format!("talking to {peer}: {e}"));
        s.set_nonblocking(false).map_err(io)?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut hello = [0u8; 16];
        if let Err(e) = s.read_exact(&mut hello) {
            return Err(self.err(format!(
                "{peer} connected but sent no complete hello ({e}): is something else using the port?"
            )));
        }
        let word = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().unwrap());
        if &hello[..4] != MAGIC || word(4) != VERSION {
            return Err(self.err(format!(
                "{peer} sent a message that is not a vidgrad rendezvous hello (version {VERSION}): \
                 is something else using the port?"
            )));
        }
        let (rank, world) = (word(8) as usize, word(12) as usize);
        let problem = if world != self.world_size {
            Some(format!(
                "rank {rank} says the world has {world} processes, rank 0 says {}",
                self.world_size
            ))
        } else if rank == 0 || rank >= world {
            Some(format!("{peer} claims rank {rank} in a world of {world}"))
        } else if served[rank] {
            Some(format!(
                "rank {rank} connected twice (two processes with the same RANK?), again from {peer}"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let _ = send_frame(&mut s, REFUSED, p.as_bytes());
            return Err(self.err(p));
        }
        send_frame(&mut s, OK, payload).map_err(io)?;
        Ok(rank)
    }

    /// A rank other than 0: connect (retrying until rank 0 listens), say hello, read the answer.
    fn join(&self) -> Result<Vec<u8>> {
        let addrs = self.resolve()?;
        let deadline = Instant::now() + self.timeout;
        let mut s = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = addrs
                .iter()
                .map(|a| {
                    TcpStream::connect_timeout(a, left.clamp(Duration::from_millis(1), IO_TIMEOUT))
                })
                .find_map(|r| r.ok());
            if let Some(s) = last {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(self.err(format!(
                    "rank 0 was not reachable within {:.1} s (VIDGRAD_DIST_TIMEOUT): is rank 0 \
                     running, and MASTER_ADDR/MASTER_PORT its address?",
                    self.timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let io = |e: std::io::Error| self.err(format!("exchange with rank 0: {e}"));
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(IO_TIMEOUT);
        s.set_read_timeout(Some(left)).map_err(io)?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut hello = Vec::with_capacity(16);
        hello.extend_from_slice(MAGIC);
        for v in [VERSION, self.rank as u32, self.world_size as u32] {
            hello.extend_from_slice(&v.to_le_bytes());
        }
        s.write_all(&hello).map_err(io)?;
        let (status, body) = read_frame(&mut s).map_err(io)?;
        match status {
            OK => Ok(body),
            REFUSED => Err(self.err(format!(
                "rank 0 refused: {}",
                String::from_utf8_lossy(&body)
            ))),
            other => Err(self.err(format!("rank 0 answered with unknown status {other}"))),
        }
    }
}

/// status byte, u32 length (little-endian), body.
fn send_frame(s: &mut TcpStream, status: u8, body: &[u8]) -> std::io::Result<()> {
    let mut frame = vec![status];
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[1..].try_into().unwrap());
    if len > MAX_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an answer of {len} bytes (at most {MAX_LEN}): not a vidgrad rendezvous"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port that was free a moment ago (bound to port 0, then released).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn rdv(port: u16, rank: usize, world: usize, timeout_s: f64) -> Rendezvous {
        Rendezvous {
            addr: "127.0.0.1".into(),
            port,
            rank,
            world_size: world,
            timeout: Duration::from_secs_f64(timeout_s),
        }
    }

    #[test]
    fn every_rank_receives_rank_0s_bytes() {
        let port = free_port();
        let id: Vec<u8> = (0..128u8).map(|b| b.wrapping_mul(37)).collect();
        let world = 4;
        let joiners: Vec<_> = (1..world)
            .map(|r| std::thread::spawn(move || rdv(port, r, world, 10.0).share(None)))
            .collect();
        let root = rdv(port, 0, world, 10.0).share(Some(&id)).unwrap();
        assert_eq!(root, id);
        for j in joiners {
            assert_eq!(j.join().unwrap().unwrap(), id);
        }
    }

    #[test]
    fn a_rank_that_never_comes_is_an_error_naming_it_within_the_timeout() {
        let port = free_port();
        let one = std::thread::spawn(move || rdv(port, 1, 3, 5.0).share(None));
        let t = Instant::now();
        let e = rdv(port, 0, 3, 2.0)
            .share(Some(&[7; 128]))
            .unwrap_err()
            .to_string();
        let took = t.elapsed().as_secs_f64();
        assert!((2.0..5.0).contains(&took), "{took} s");
        assert!(e.contains("rank(s) 2 did not connect"), "{e}");
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert_eq!(one.join().unwrap().unwrap(), [7; 128]);
    }

    #[test]
    fn rank_0_that_never_listens_is_an_error_naming_address_and_rank() {
        let port = free_port();
        let t = Instant::now();
        let e = rdv(port, 2, 3, 1.0).share(None).unwrap_err().to_string();
        assert!(t.elapsed().as_secs_f64() < 4.0);
        assert!(
            e.contains(&format!("127.0.0.1:{port}")) && e.contains("rank 2 of 3"),
            "{e}"
        );
        assert!(e.contains("not reachable"), "{e}");
    }

    #[test]
    fn a_wrong_world_size_is_refused_on_both_sides() {
        let port = free_port();
        let bad = std::thread::spawn(move || rdv(port, 1, 3, 5.0).share(None));
        let e = rdv(port, 0, 2, 5.0)
            .share(Some(&[1; 128]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 1 says the world has 3 processes, rank 0 says 2"),
            "{e}"
        );
        let e = bad.join().unwrap().unwrap_err().to_string();
        assert!(
            e.contains("rank 0 refused") && e.contains("has 3 processes"),
            "{e}"
        );
    }

    #[test]
    fn a_stranger_on_the_port_is_an_error_not_a_hang() {
        let port = free_port();
        let stranger = std::thread::spawn(move || {
            // connect once rank 0 listens, then send something that is not a hello
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                    return;
                }
                assert!(Instant::now() < deadline, "rank 0 never listened");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let e = rdv(port, 0, 2, 5.0)
            .share(Some(&[1; 128]))
            .unwrap_err()
            .to_string();
        stranger.join().unwrap();
        assert!(e.contains("not a vidgrad rendezvous hello"), "{e}");
    }

    #[test]
    fn the_same_rank_twice_is_refused() {
        let port = free_port();
        let twice: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || rdv(port, 1, 3, 5.0).share(None)))
            .collect();
        let e = rdv(port, 0, 3, 5.0)
            .share(Some(&[1; 128]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 1 connected twice"), "{e}");
        let answers: Vec<Result<Vec<u8>>> = twice.into_iter().map(|t| t.join().unwrap()).collect();
        // one was served, the other refused
        assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 1);
        let refused = answers
            .into_iter()
            .find_map(|a| a.err())
            .unwrap()
            .to_string();
        assert!(refused.contains("rank 0 refused"), "{refused}");
    }

    #[test]
    fn a_rank_outside_the_world_is_an_error() {
        let e = rdv(1, 3, 2, 1.0).share(None).unwrap_err().to_string();
        assert!(
            e.contains("rank 3 of 2") && e.contains("outside the world"),
            "{e}"
        );
    }
}
