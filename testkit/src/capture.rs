use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{Netns, sys};

/// Largest frame a [`Capture`] accepts: 64 KiB plus room for link-layer headers, so that
/// any IP packet of legacy maximum size (GSO super-packets included) fits. Larger frames
/// (BIG TCP) are reported as an error by [`Capture::stop`].
pub const MAX_FRAME: usize = (64 << 10) + 1024;
/// Kernel receive buffer of the packet socket.
const CAPTURE_RCVBUF: libc::c_int = 64 << 20;
/// Bounds of one capture: it ends with an error rather than grow without limit.
const MAX_FRAMES: usize = 4_000_000;
const MAX_BYTES: usize = 2 << 30;
const MAX_DURATION: Duration = Duration::from_secs(15 * 60);
/// After `stop`, frames keep being collected until the interface has been quiet this long
/// (frames still in flight on the veth), but no longer than `STOP_LINGER_MAX`.
const STOP_QUIET: Duration = Duration::from_millis(100);
const STOP_LINGER_MAX: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

/// An independent observer of the frames an interface receives: an AF_PACKET socket
/// (`ETH_P_ALL`) created inside the namespace and bound to the interface, read on a
/// background thread. Frames the interface sends (`PACKET_OUTGOING`) are skipped.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Vec<u8>>>>>,
    ifname: String,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns`. Frames are collected from the moment this
    /// returns.
    pub fn start(ns: &Netns, ifname: &str) -> Result<Capture> {
        let name = ifname.to_owned();
        let fd = ns
            .run_in(move || -> io::Result<OwnedFd> {
                let index = sys::if_nametoindex(&name)?;
                let all = (libc::ETH_P_ALL as u16).to_be();
                // Protocol 0: the socket sees nothing until bound, so no frame of another
                // interface slips in between socket() and bind().
                let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
                sys::set_rcvbuf(fd.as_fd(), CAPTURE_RCVBUF)?;
                // Best effort (Linux >= 4.20): do not even queue our own transmissions.
                let _ = sys::setsockopt::<libc::c_int>(
                    fd.as_fd(),
                    sys::SOL_PACKET,
                    sys::PACKET_IGNORE_OUTGOING,
                    1,
                );
                // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = all;
                sll.sll_ifindex = index as libc::c_int;
                bind_ll(&fd, &sll)?;
                // Reset the drop counter (reading PACKET_STATISTICS clears it).
                sys::getsockopt::<sys::TpacketStats>(
                    fd.as_fd(),
                    sys::SOL_PACKET,
                    sys::PACKET_STATISTICS,
                )?;
                Ok(fd)
            })?
            .with_context(|| format!("opening a packet socket on {ifname} in {}", ns.name()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let ifname = ifname.to_owned();
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || {
                    capture_loop(fd, &stop).with_context(|| format!("capture on {ifname}"))
                })
                .context("spawning the capture thread")?
        };
        Ok(Capture {
            stop,
            thread: Some(thread),
            ifname: ifname.to_owned(),
        })
    }

    /// Stops capturing and returns the received frames in arrival order. Frames still in
    /// flight are collected until the interface has been quiet for 100 ms (at most 2 s).
    /// Errors if a frame was larger than [`MAX_FRAME`], if the kernel dropped frames, or if
    /// the capture hit its size / duration bounds.
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self
            .thread
            .take()
            .expect("capture thread present until stop");
        thread
            .join()
            .map_err(|_| anyhow!("capture thread on {} panicked", self.ifname))?
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind_ll(fd: &OwnedFd, sll: &libc::sockaddr_ll) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `sll` is a valid sockaddr_ll for the whole call and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn capture_loop(fd: OwnedFd, stop: &AtomicBool) -> Result<Vec<Vec<u8>>> {
    let started = Instant::now();
    let mut frames = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; MAX_FRAME];
    let mut stop_at: Option<Instant> = None;
    let mut last_frame = Instant::now();
    loop {
        if started.elapsed() >= MAX_DURATION {
            bail!("capture ran longer than {MAX_DURATION:?} without being stopped");
        }
        if sys::poll_readable(fd.as_fd(), POLL)? {
            // Drain what is queued (bounded by the frame / byte limits below).
            loop {
                let (n, sll) = match sys::recvfrom::<libc::sockaddr_ll>(
                    fd.as_fd(),
                    &mut buf,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                ) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(anyhow!(e).context("recvfrom on the packet socket")),
                };
                last_frame = Instant::now();
                if sll.sll_pkttype == sys::PACKET_OUTGOING {
                    continue;
                }
                if n > buf.len() {
                    bail!(
                        "received a {n}-byte frame, larger than MAX_FRAME ({MAX_FRAME}) (BIG TCP?)"
                    );
                }
                total += n;
                frames.push(buf[..n].to_vec());
                if frames.len() > MAX_FRAMES || total > MAX_BYTES {
                    bail!("capture exceeded {MAX_FRAMES} frames or {MAX_BYTES} bytes");
                }
            }
        }
        // `stop` seen in an earlier iteration: at least one drain happened since, so no
        // frame queued before `stop` was called is left behind.
        if let Some(at) = stop_at
            && (last_frame.elapsed() >= STOP_QUIET || at.elapsed() >= STOP_LINGER_MAX)
        {
            break;
        }
        if stop_at.is_none() && stop.load(Ordering::SeqCst) {
            stop_at = Some(Instant::now());
        }
    }
    let stats: sys::TpacketStats =
        sys::getsockopt(fd.as_fd(), sys::SOL_PACKET, sys::PACKET_STATISTICS)?;
    if stats.tp_drops > 0 {
        bail!(
            "the kernel dropped {} frames (socket buffer full); {} captured",
            stats.tp_drops,
            frames.len()
        );
    }
    Ok(frames)
}
