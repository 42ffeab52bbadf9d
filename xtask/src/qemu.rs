//! Other kernels under QEMU: `cargo xtask qemu --kernel 6.1|6.12 [--timeout SECS] -- CMD...`
//! runs CMD as root in a guest booted from Debian's own kernel package of that line, and
//! `cargo xtask qemu --suites [--kernel K]` runs the kernel test suites there (`cargo xtask test`
//! does that after the host tests).
//!
//! How a guest is made (docs: /work/shared/TOOLCHAIN.md, "Other kernels under QEMU"):
//!
//! 1. `apt-get download` the newest `linux-image-6.1.0-N-amd64` or `linux-image-6.12.N+deb12-amd64`,
//!    `dpkg-deb -x` it under `~/.cache/flowlens/kernels/<package>/root` and `depmod -b` it.
//! 2. The bzImage's compressed payload, decompressed, is the ELF `vmlinux`; QEMU boots it through
//!    its PVH entry (no slow in-guest decompression under TCG).
//! 3. A tiny initramfs: static busybox, the modules needed to mount the root (virtio-pci, 9p,
//!    overlay and what `modules.dep` says they need, decompressed) and `/init`, which mounts this
//!    machine's `/` read-only over virtio-9p with a tmpfs overlay on top and `switch_root`s into it.
//!    The guest therefore runs the very binaries the host just built; whatever it writes is gone
//!    when it stops. The kernel's unpacked `lib/modules` is bind-mounted where the host's
//!    `modprobe` looks, so veth, nf_tables, ... load on demand.
//! 4. The command runs with fresh `/proc`, `/sys`, `/dev`, `/run`, bpffs and cgroup2, in the
//!    caller's working directory and environment. Its output streams over the serial console; a
//!    marker line carries its exit status back. KVM cannot boot a stock kernel on these machines
//!    (they are PVM guests themselves), so QEMU emulates (TCG).
//!
//! A guest that hangs is killed (by its own pid) at the timeout, and a kernel panic (oopses are
//! made panics) fails the run; both errors end with the console's last lines.

use std::{
    collections::VecDeque,
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{run, setup::Env};

/// The kernel lines the tests run on: (name on the command line, apt package pattern).
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
];

/// Modules `/init` loads before it can mount the root (built in on some kernels: skipped then).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Virtual CPUs of a guest unless a suite or `--smp` says otherwise: two, so that the
/// concurrency suites really run the probe on two CPUs at once.
///
/// Suites that run many `BPF_PROG_TEST_RUN`s of XDP programs from parallel test threads get one
/// vCPU on 6.12. Each XDP test run adds its program to the kernel's XDP dispatcher and removes
/// it again, and since 6.2 the dispatcher is a static call that the kernel live-patches with
/// `text_poke_bp` (int3 first, then the new `jmp`). Under QEMU's multi-threaded TCG, a second
/// vCPU running the dispatcher at that moment can still execute the transient int3
/// after the patch is done, and the kernel dies with "Oops: int3" at
/// `bpf_dispatcher_xdp_func+0xa` (the byte after the `e9`). Measured on 6.12.118 (2026-12-05,
/// `cargo xtask qemu --kernel 6.12 --smp N -- env FLOWLENS_DIFF_PACKETS=20000 <xdp_test_run>`):
/// 2 vCPUs panicked 3 of 3 times (probe_variants 1 of 2); 1 vCPU passed 3 of 3 (probe_variants
/// 3 of 3); 2 vCPUs with `--test-threads=1` passed 2 of 2. The same tests run in parallel on the
/// host kernel, without an emulator, and 6.1 (dispatcher patched without static calls) passes
/// with 2 vCPUs, so this is the emulator's cross-modifying-code handling, not the probe.
const DEFAULT_VCPUS: u8 = 2;

/// Lines of console output an error shows.
const TAIL_LINES: usize = 40;

const HELP: &str =
    "usage: cargo xtask qemu --kernel 6.1|6.12 [--timeout SECS] [--smp N] -- CMD [ARGS...]
       cargo xtask qemu --suites [--kernel 6.1|6.12]
  Boots Debian's kernel of that line under QEMU (TCG) with this machine's / (read-only, tmpfs
  overlay) and runs CMD as root in the current directory; exits with CMD's status.
  --smp N gives the guest N virtual CPUs (default 2).
  --suites runs the kernel test suites chosen for guests (see SUITES in xtask/src/qemu.rs).";

/// `cargo xtask qemu ...`.
pub fn cli(env: &Env, args: &[String]) -> Result<()> {
    let (opts, cmd) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut kernel = None;
    let mut timeout = Duration::from_secs(1800);
    let mut suites = false;
    let mut vcpus = DEFAULT_VCPUS;
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        match o.as_str() {
            "--kernel" => kernel = Some(it.next().context("--kernel needs 6.1 or 6.12")?.clone()),
            "--timeout" => {
                let v = it.next().context("--timeout needs seconds")?;
                let s: u64 = v
                    .parse()
                    .with_context(|| format!("--timeout {v:?}: expected whole seconds"))?;
                timeout = Duration::from_secs(s);
            }
            "--smp" => {
                let v = it.next().context("--smp needs a number of CPUs")?;
                vcpus = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .with_context(|| format!("--smp {v:?}: expected 1 to 8"))?;
            }
            "--suites" => suites = true,
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            other => bail!("qemu: unknown option {other:?}\n{HELP}"),
        }
    }
    if suites {
        return run_suites(env, kernel.as_deref());
    }
    let kernel = kernel.context("qemu: --kernel 6.1|6.12 is required")?;
    if cmd.is_empty() {
        bail!("qemu: no command given after --\n{HELP}");
    }
    let guest = Guest::prepare(&kernel)?;
    guest.run(cmd, timeout, vcpus)
}

/// A bootable kernel, unpacked and cached.
pub struct Guest {
    /// "6.1" or "6.12".
    line: String,
    /// The `uname -r` of the kernel.
    release: String,
    dir: PathBuf,
}

impl Guest {
    /// Downloads and unpacks the newest kernel of `line` unless it is cached.
    pub fn prepare(line: &str) -> Result<Guest> {
        let pattern = KERNELS
            .iter()
            .find(|(l, _)| *l == line)
            .map(|(_, p)| *p)
            .with_context(|| format!("qemu: unknown kernel {line:?}: expected 6.1 or 6.12"))?;
        ensure_debs(&[
            "qemu-system-x86",
            "busybox-static",
            "kmod",
            "xz-utils",
            "zstd",
        ])?;
        let package = newest_package(pattern)?;
        let dir = cache_dir().join(&package);
        let ready = dir.join("ready");
        if !ready.exists() {
            eprintln!("xtask: preparing {package} for QEMU in {}", dir.display());
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            unpack(&package, &dir).with_context(|| format!("preparing {package}"))?;
            fs::write(&ready, "")?;
        }
        let release = only_entry(&dir.join("root/lib/modules"))?;
        // Made each time (well under a second) so it always has this harness's scripts.
        let cpio = initramfs(&dir.join("root/lib/modules").join(&release))?;
        let tmp = dir.join(format!("initramfs.cpio.{}", std::process::id()));
        fs::write(&tmp, cpio)?;
        fs::rename(&tmp, dir.join("initramfs.cpio"))?;
        Ok(Guest {
            line: line.to_string(),
            release,
            dir,
        })
    }

    /// Runs `cmd` in the guest, streaming its output; fails if it exits non-zero, the kernel
    /// panics, or it is not done within `timeout`.
    pub fn run(&self, cmd: &[String], timeout: Duration, vcpus: u8) -> Result<()> {
        let nonce = format!(
            "{:x}",
            std::process::id() as u64 * 1_000_003 + now_ns() % 1_000_003
        );
        let marker = format!("FLOWLENS-GUEST-EXIT-{nonce}=");
        // The command script is read by the guest through the shared root: same path.
        let script_dir = std::env::temp_dir().join(format!("flowlens-qemu-{nonce}"));
        fs::create_dir_all(&script_dir)?;
        let script = script_dir.join("run.sh");
        fs::write(&script, command_script(cmd)?)?;
        let append = format!(
            "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic flowlens.script={} flowlens.modules={} flowlens.nonce={nonce}",
            script.display(),
            self.dir
                .join("root/lib/modules")
                .join(&self.release)
                .display()
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "2048"])
            .args(["-smp", &vcpus.to_string()])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(self.dir.join("vmlinux"))
            .arg("-initrd")
            .arg(self.dir.join("initramfs.cpio"))
            .args(["-append", &append])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
        let (tx, rx) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).split(b'\n').map_while(|l| l.ok()) {
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut tail = VecDeque::new();
        let mut status = None;
        let mut panicked = false;
        let outcome = loop {
            let left = timeout.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rc) = line.strip_prefix(&marker) {
                        status = rc.trim().parse::<i32>().ok();
                        continue;
                    }
                    panicked |= line.contains("Kernel panic - not syncing");
                    println!("{line}");
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Child::kill sends SIGKILL to this QEMU's own pid.
                    let _ = child.kill();
                    break Err(format!(
                        "timed out after {}s (QEMU killed)",
                        timeout.as_secs()
                    ));
                }
            }
        };
        let qemu_status = child.wait()?;
        let _ = fs::remove_dir_all(&script_dir);
        let secs = started.elapsed().as_secs();
        let tail = Vec::from(tail).join("\n");
        let what = format!(
            "{} guest ({}), `{}`",
            self.line,
            self.release,
            cmd.join(" ")
        );
        match (outcome, panicked, status) {
            (Err(why), _, _) => bail!("{what}: {why}; last console lines:\n{tail}"),
            (Ok(()), true, _) => {
                bail!("{what}: kernel panic after {secs}s; last console lines:\n{tail}")
            }
            (Ok(()), false, Some(0)) => {
                eprintln!("xtask: {what}: ok in {secs}s");
                Ok(())
            }
            (Ok(()), false, Some(rc)) => bail!("{what}: exited with status {rc} after {secs}s"),
            (Ok(()), false, None) => bail!(
                "{what}: guest stopped without an exit status after {secs}s (QEMU: {qemu_status}); last console lines:\n{tail}"
            ),
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/flowlens/kernels")
}

/// Installs the Debian packages the harness needs when missing.
fn ensure_debs(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing apt packages {missing:?}");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The newest package whose name matches `pattern` (highest version numbers).
fn newest_package(pattern: &str) -> Result<String> {
    let search = || -> Result<Vec<String>> {
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("running apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    };
    let mut found = search()?;
    if found.is_empty() {
        run(Command::new("apt-get").arg("update"))?;
        found = search()?;
    }
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    found
        .into_iter()
        .max_by_key(|p| numbers(p))
        .with_context(|| format!("no apt package matches {pattern}"))
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    match (names.next(), names.next()) {
        (Some(n), None) => Ok(n),
        _ => bail!("expected exactly one entry in {}", dir.display()),
    }
}

/// Download, unpack, depmod, vmlinux.
fn unpack(package: &str, dir: &Path) -> Result<()> {
    run(Command::new("apt-get")
        .args(["download", package])
        .current_dir(dir))?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;
    let release = only_entry(&root.join("lib/modules"))?;
    run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    let bz = fs::read(root.join(format!("boot/vmlinuz-{release}")))?;
    fs::write(dir.join("vmlinux"), vmlinux_of(&bz, dir)?)?;
    Ok(())
}

/// The ELF kernel inside a bzImage: the payload the boot header points at, decompressed.
fn vmlinux_of(bz: &[u8], scratch: &Path) -> Result<Vec<u8>> {
    let u32_at = |at: usize| -> Result<usize> {
        let b = bz.get(at..at + 4).context("bzImage too short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS boot header)");
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = bz
        .get(start..start + u32_at(0x24c)?)
        .context("bzImage payload out of range")?;
    // The kernel build appends the uncompressed size (4 bytes) to xz and zstd payloads.
    let (tool, body) = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => ("xz", &payload[..payload.len() - 4]),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ("zstd", &payload[..payload.len() - 4]),
        _ => bail!("bzImage payload is neither xz nor zstd"),
    };
    let packed = scratch.join("payload");
    fs::write(&packed, body)?;
    let out = Command::new(tool)
        .arg("-dc")
        .arg(&packed)
        .output()
        .with_context(|| format!("running {tool}"))?;
    fs::remove_file(&packed)?;
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        bail!(
            "decompressing the bzImage payload with {tool} gave no ELF: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `BOOT_MODULES` and what they depend on, in load order (paths relative to `modules`).
fn boot_modules(modules: &Path) -> Result<Vec<String>> {
    let dep = fs::read_to_string(modules.join("modules.dep"))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin"))?;
    let name_of = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let deps: Vec<(String, String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            let d = d.split_whitespace().map(str::to_string).collect();
            (name_of(m), m.to_string(), d)
        })
        .collect();
    fn visit(
        path: &str,
        deps: &[(String, String, Vec<String>)],
        out: &mut Vec<String>,
    ) -> Result<()> {
        if out.iter().any(|p| p == path) {
            return Ok(());
        }
        let (_, _, d) = deps
            .iter()
            .find(|(_, p, _)| p == path)
            .with_context(|| format!("{path} missing from modules.dep"))?;
        for x in d {
            visit(x, deps, out)?;
        }
        out.push(path.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for want in BOOT_MODULES {
        match deps.iter().find(|(n, _, _)| n == want) {
            Some((_, path, _)) => visit(path, &deps, &mut order)?,
            None if builtin.lines().any(|l| name_of(l) == *want) => {}
            None => bail!("module {want} is neither in modules.dep nor built in"),
        }
    }
    Ok(order)
}

/// The initramfs (an uncompressed `newc` cpio archive).
fn initramfs(modules: &Path) -> Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for d in [
        "bin", "dev", "proc", "sys", "mods", "lower", "rw", "newroot",
    ] {
        cpio.dir(d);
    }
    cpio.node("dev/console", 0o020600, (5, 1));
    cpio.file("bin/busybox", 0o755, &fs::read("/bin/busybox")?);
    let mut list = String::new();
    for (i, m) in boot_modules(modules)?.iter().enumerate() {
        let path = modules.join(m);
        let body = if m.ends_with(".xz") || m.ends_with(".zst") {
            let tool = if m.ends_with(".xz") { "xz" } else { "zstd" };
            let out = Command::new(tool).arg("-dc").arg(&path).output()?;
            if !out.status.success() {
                bail!("decompressing {}", path.display());
            }
            out.stdout
        } else {
            fs::read(&path)?
        };
        let name = format!("{i:02}.ko");
        cpio.file(&format!("mods/{name}"), 0o644, &body);
        list.push_str(&name);
        list.push('\n');
    }
    cpio.file("mods/order", 0o644, list.as_bytes());
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("stage2", 0o755, STAGE2.as_bytes());
    Ok(cpio.finish())
}

/// Runs in the initramfs (busybox): mounts the root and switches to it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stop() { echo "flowlens-guest: $*"; poweroff -f; }
for m in $(cat /mods/order); do insmod /mods/$m || stop "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=262144,ro hostroot /lower || stop "mounting the host root failed"
mount -t tmpfs -o mode=755 tmpfs /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || stop "overlay mount failed"
mkdir -p /newroot/.flowlens-guest && cp /stage2 /bin/busybox /newroot/.flowlens-guest/
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh /.flowlens-guest/stage2
"#;

/// Runs in the switched root (the host's /bin/sh): fresh mounts, then the command.
const STAGE2: &str = r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for a in $(cat /proc/cmdline); do
  case "$a" in
    flowlens.script=*) script="${a#*=}" ;;
    flowlens.modules=*) modules="${a#*=}" ;;
    flowlens.nonce=*) nonce="${a#*=}" ;;
  esac
done
mkdir -p "/lib/modules/$(uname -r)" && mount --bind "$modules" "/lib/modules/$(uname -r)"
ip link set lo up
sh "$script" </dev/null
echo "FLOWLENS-GUEST-EXIT-$nonce=$?"
# Powers off at once (reboot(2)); busybox is in the tmpfs, not on the share that goes away.
exec /.flowlens-guest/busybox poweroff -f
"#;

/// The script the guest runs: the caller's directory, environment and command.
fn command_script(cmd: &[String]) -> Result<String> {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut s = String::new();
    let cwd = std::env::current_dir()?;
    s.push_str(&format!("cd {} || exit 125\n", q(&cwd.to_string_lossy())));
    for (k, v) in std::env::vars() {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            s.push_str(&format!("export {k}={}\n", q(&v)));
        }
    }
    s.push_str("exec");
    for a in cmd {
        s.push(' ');
        s.push_str(&q(a));
    }
    s.push('\n');
    Ok(s)
}

/// A `newc` cpio archive writer (what the kernel unpacks as initramfs).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(body);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }
    fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), body);
    }
    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// A kernel test binary (a `collector/tests/*.rs` target) and the tests of it a guest runs.
struct Suite {
    /// Cargo test target name.
    target: &'static str,
    /// Kernel lines it runs on.
    kernels: &'static [&'static str],
    /// Exact test names; empty: all of them.
    tests: &'static [&'static str],
    /// Environment for the suite (`NAME=value`).
    env: &'static [&'static str],
    /// More arguments for the test binary.
    args: &'static [&'static str],
    /// Virtual CPUs of the guest.
    vcpus: u8,
}

/// What the guests run, chosen to fit `cargo xtask test` in 40 minutes on 2 cores: everything
/// that exercises the verifier and the probe's counting (BPF_PROG_TEST_RUN suites, the mutated
/// corpus, the concurrent drain), and one end-to-end run per attach point with exact counts.
/// The other end-to-end tests exercise user space (sinks, metrics, config), which the guest
/// kernel does not change, and run on the host only.
const SUITES: &[Suite] = &[
    Suite {
        target: "xdp_test_run",
        kernels: &["6.1"],
        tests: &[],
        // The differential test's 200,000 random frames take 10 minutes under TCG; 20,000
        // still hit every category it checks (same program, same verifier verdict).
        env: &["FLOWLENS_DIFF_PACKETS=20000"],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        // One vCPU on 6.12: see DEFAULT_VCPUS for why.
        target: "xdp_test_run",
        kernels: &["6.12"],
        tests: &[],
        env: &["FLOWLENS_DIFF_PACKETS=20000"],
        args: &[],
        vcpus: 1,
    },
    Suite {
        target: "xdp_corpus",
        kernels: &["6.1"],
        tests: &[
            "xdp_corpus_matches_the_twin",
            "xdp_refuses_frames_below_the_ethernet_header",
        ],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        target: "xdp_corpus",
        kernels: &["6.12"],
        tests: &[],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        target: "nf_test_run",
        kernels: &["6.12"],
        tests: &[],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        target: "xdp_concurrency",
        kernels: &["6.1", "6.12"],
        tests: &["drains_during_concurrent_updates_lose_and_duplicate_nothing"],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        target: "probe_variants",
        kernels: &["6.1"],
        tests: &[],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        // One vCPU on 6.12: see DEFAULT_VCPUS for why.
        target: "probe_variants",
        kernels: &["6.12"],
        tests: &[],
        env: &[],
        args: &[],
        vcpus: 1,
    },
    Suite {
        target: "netns_e2e",
        kernels: &["6.1", "6.12"],
        tests: &["xdp_exports_exact_counts_for_real_traffic"],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        // Issue 12: socket cgroup capture in the netfilter programs on a pure cgroup v2 guest,
        // and containers behind veths named by interface.
        target: "identity_e2e",
        kernels: &["6.12"],
        tests: &[],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        target: "netfilter_e2e",
        kernels: &["6.12"],
        tests: &["forward_in_router_counts_forwarded_traffic_exactly"],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        target: "netfilter_e2e",
        kernels: &["6.1"],
        // Ignored on the host (which has netfilter links); meant for this kernel.
        tests: &["netfilter_missing_from_the_kernel_falls_back_to_xdp_only"],
        env: &[],
        args: &["--ignored"],
        vcpus: DEFAULT_VCPUS,
    },
    Suite {
        // `flowlens check` and the XDP auto fallback on the guest's own kernel: on 6.1 the
        // netfilter lines must say what is missing for real (no netfilter links).
        target: "check",
        kernels: &["6.1", "6.12"],
        tests: &[],
        env: &[],
        args: &[],
        vcpus: DEFAULT_VCPUS,
    },
];

/// Per suite: the longest a guest may take before it is killed.
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

/// The test binaries cargo builds for `targets` of package `flowlens`: target name -> path.
fn test_binaries(env: &Env, targets: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut c = crate::cargo(env);
    c.args([
        "test",
        "--no-run",
        "--message-format=json",
        "--workspace",
        // The same features as the host run of `cargo xtask test`, so its binaries are reused.
        "--features",
        crate::KERNEL_AND_PEER_TESTS,
    ]);
    for t in targets {
        c.args(["--test", t]);
    }
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(bins)
}

/// Runs [`SUITES`] in a guest per kernel line (or only `only`), one guest boot per suite.
pub fn run_suites(env: &Env, only: Option<&str>) -> Result<()> {
    let lines: Vec<&str> = match only {
        Some(k) => vec![k],
        None => KERNELS.iter().map(|(l, _)| *l).collect(),
    };
    let mut targets: Vec<&str> = SUITES.iter().map(|s| s.target).collect();
    targets.sort_unstable();
    targets.dedup();
    let bins = test_binaries(env, &targets)?;
    let collector = Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector");
    std::env::set_current_dir(&collector)
        .with_context(|| format!("entering {}", collector.display()))?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        let guest = Guest::prepare(line)?;
        if i == 0 {
            self_check(&guest)?;
        }
        for s in SUITES.iter().filter(|s| s.kernels.contains(&line)) {
            let (_, bin) = bins
                .iter()
                .find(|(n, _)| n == s.target)
                .with_context(|| format!("cargo built no test binary {}", s.target))?;
            let mut cmd: Vec<String> = vec!["env".into()];
            cmd.extend(s.env.iter().map(|e| e.to_string()));
            cmd.push(bin.to_string_lossy().into_owned());
            cmd.push("--color=never".into());
            cmd.extend(s.args.iter().map(|a| a.to_string()));
            if !s.tests.is_empty() {
                cmd.push("--exact".into());
                cmd.extend(s.tests.iter().map(|t| t.to_string()));
            }
            eprintln!("xtask: {line} guest: {}", cmd.join(" "));
            let t0 = Instant::now();
            let r = guest.run(&cmd, SUITE_TIMEOUT, s.vcpus);
            let secs = t0.elapsed().as_secs();
            let tests = if s.tests.is_empty() {
                "all".to_string()
            } else {
                s.tests.join(", ")
            };
            let verdict = match &r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!(
                    "FAILED: {}",
                    format!("{e:#}").lines().next().unwrap_or_default()
                ),
            };
            summary.push(format!(
                "{line:>4} {:<16} {secs:>4}s {verdict} ({tests})",
                s.target
            ));
            if let Err(e) = r {
                failed.push(format!("{line} {}: {e:#}", s.target));
            }
        }
    }
    eprintln!("xtask: guest suites:\n  {}", summary.join("\n  "));
    if !failed.is_empty() {
        bail!(
            "{} guest suite(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// Proves, on every run, that a guest that hangs or panics fails the harness with the console's
/// tail instead of hanging CI or passing.
fn self_check(guest: &Guest) -> Result<()> {
    eprintln!(
        "xtask: harness self-check: a guest that hangs, then one that panics (both must fail)"
    );
    let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let t0 = Instant::now();
    let hang = guest.run(
        &sh("echo flowlens-hang-check; sleep 600"),
        Duration::from_secs(40),
        1,
    );
    match hang {
        Err(e)
            if format!("{e}").contains("timed out")
                && format!("{e}").contains("flowlens-hang-check") => {}
        other => bail!(
            "harness self-check: a hanging guest gave {other:?}, not a timeout with the console tail"
        ),
    }
    let panic = guest.run(
        &sh("echo c > /proc/sysrq-trigger; sleep 600"),
        Duration::from_secs(120),
        1,
    );
    match panic {
        Err(e) if format!("{e}").contains("kernel panic") && format!("{e}").contains("sysrq") => {}
        other => bail!(
            "harness self-check: a panicking guest gave {other:?}, not a panic with the console tail"
        ),
    }
    eprintln!(
        "xtask: harness self-check passed in {}s (hang and panic both failed the run)",
        t0.elapsed().as_secs()
    );
    Ok(())
}
