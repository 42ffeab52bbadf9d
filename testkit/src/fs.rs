//! Test directories and small file systems.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, ensure};

/// A unique path `$TMPDIR/flowlens-{tag}-{pid}-{nanos}` that does not exist yet.
pub fn unique_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!("flowlens-{tag}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// A fresh, empty directory at [`unique_path`].
pub fn temp_dir(tag: &str) -> Result<PathBuf> {
    let d = unique_path(tag);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A tmpfs of a given size mounted at a fresh directory (needs root); unmounted and removed on
/// drop, also when the test fails.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `size` as `mount -o size=` takes it (`96k`, `1m`).
    pub fn mount(tag: &str, size: &str) -> Result<Tmpfs> {
        let dir = temp_dir(tag)?;
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "flowlens-test",
            ])
            .arg(&dir)
            .status()?;
        ensure!(st.success(), "mount tmpfs at {}: {st}", dir.display());
        Ok(Tmpfs(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Fills the file system up with the file `name` (written until ENOSPC); returns its path,
    /// so that removing it gives the space back.
    pub fn fill(&self, name: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0xa5u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
