use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::sys;

/// Where `ip netns` keeps its namespace handles.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Longest accepted tag (keeps names readable; namespace names themselves have no 15-byte
/// limit, interface names are derived separately, see [`crate::veth_pair`]).
const MAX_TAG: usize = 24;
/// How many names `Netns::new` tries before giving up (stale namespaces left behind by a
/// crashed run whose pid was reused).
const NAME_ATTEMPTS: u32 = 64;

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted again on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `fl-{tag}-{pid}-{n}` (`n` counts up per process, so the name
    /// is unique among concurrent test runs) and brings its `lo` up.
    ///
    /// `tag` must be non-empty and consist of ASCII letters, digits, `_` or `-` (at most 24).
    pub fn new(tag: &str) -> Result<Netns> {
        ensure!(
            !tag.is_empty()
                && tag.len() <= MAX_TAG
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "invalid namespace tag {tag:?}: use 1..={MAX_TAG} of [A-Za-z0-9_-]"
        );
        let pid = std::process::id();
        for _ in 0..NAME_ATTEMPTS {
            let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
            let name = format!("fl-{tag}-{pid}-{n}");
            if PathBuf::from(NETNS_RUN_DIR).join(&name).exists() {
                continue; // left behind by an earlier process with the same pid
            }
            let out = run(Command::new("ip").args(["netns", "add", &name]))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("File exists") {
                    continue; // lost a race for this name
                }
                bail!(
                    "ip netns add {name} failed ({}): {}",
                    out.status,
                    err.trim()
                );
            }
            // From here on Drop removes the namespace, whatever fails next.
            let ns = Netns { name };
            ns.ip(&["link", "set", "lo", "up"])?;
            return Ok(ns);
        }
        bail!("no free namespace name for tag {tag:?} after {NAME_ATTEMPTS} attempts")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME args...`; an error (with `ip`'s stderr) on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        self.ip_output(args).map(drop)
    }

    /// Like [`Netns::ip`] but returns `ip`'s standard output.
    pub fn ip_output(&self, args: &[&str]) -> Result<String> {
        ip_in(&self.name, args)
    }

    /// Whether an XDP program is attached to `ifname` in this namespace (any mode).
    pub fn xdp_attached(&self, ifname: &str) -> Result<bool> {
        Ok(self
            .ip_output(&["link", "show", "dev", ifname])?
            .contains("xdp"))
    }

    /// Waits (at most 20 s) until an XDP program is attached to `ifname` (`attached`) or gone.
    pub fn wait_xdp(&self, ifname: &str, attached: bool) -> Result<()> {
        let t0 = std::time::Instant::now();
        while self.xdp_attached(ifname)? != attached {
            ensure!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "XDP attached != {attached} on {ifname} after 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// A `Command` for `program` run through `ip netns exec NAME`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered this namespace and waits for it.
    /// Sockets created by `f` belong to this namespace, wherever they are used afterwards.
    /// A panic in `f` is propagated to the caller.
    pub fn run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let handle = self.path();
        let file = File::open(&handle).with_context(|| format!("opening {}", handle.display()))?;
        let name = self.name.clone();
        let thread = std::thread::Builder::new()
            .name("netns-run-in".into())
            .spawn(move || -> Result<R> {
                sys::setns_net(file.as_fd())
                    .with_context(|| format!("setns(CLONE_NEWNET) into {name}"))?;
                drop(file);
                Ok(f())
            })
            .context("spawning a thread for run_in")?;
        match thread.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Like [`Netns::run_in`] but does not wait: returns once the new thread has entered the
    /// namespace. The caller must make `f` finish by itself (bounded) and join the handle.
    pub fn spawn_in<F, R>(&self, f: F) -> Result<NsThread<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let handle = self.path();
        let file = File::open(&handle).with_context(|| format!("opening {}", handle.display()))?;
        let (tx, rx) = mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("netns-spawn-in".into())
            .spawn(move || -> Option<R> {
                let entered = sys::setns_net(file.as_fd());
                drop(file);
                let ok = entered.is_ok();
                let _ = tx.send(entered);
                ok.then(f)
            })
            .context("spawning a thread for spawn_in")?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread { handle: thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(anyhow!(e).context(format!("setns(CLONE_NEWNET) into {}", self.name)))
            }
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => bail!("spawn_in thread for {} ended without reporting", self.name),
            },
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A thread started by [`Netns::spawn_in`].
#[derive(Debug)]
pub struct NsThread<R> {
    handle: JoinHandle<Option<R>>,
}

impl<R> NsThread<R> {
    /// Waits for the thread; propagates a panic in it.
    pub fn join(self) -> R {
        match self.handle.join() {
            Ok(Some(r)) => r,
            // spawn_in only returns an NsThread once setns succeeded, so f ran.
            Ok(None) => unreachable!("spawn_in thread did not run its closure"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// `ip -n NAME args...`, returning standard output; an error with stderr on failure.
pub(crate) fn ip_in(name: &str, args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip").arg("-n").arg(name).args(args))?;
    if !out.status.success() {
        bail!(
            "ip -n {name} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a short-lived helper command to completion, capturing its output.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))
}
