//! Atomic file and folder writes: a crash never leaves a half-written output that
//! looks complete.
//!
//! Files are written to a sibling temporary path and renamed into place; folders
//! are built under a sibling `*.partial-<pid>` folder and renamed when complete.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn temp_sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::InvalidPath {
        path: path.to_path_buf(),
        reason: "has no file name".into(),
    })?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".{tag}-{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("a.json");
/// mome_data::fsutil::write_atomic(&p, b"{}").unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"{}");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes a file atomically through a caller-supplied writer function.
pub fn write_atomic_with<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
{
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let tmp = temp_sibling(path, "tmp")?;
    let result = (|| -> io::Result<()> {
        let file = fs::File::create(&tmp)?;
        let mut w = io::BufWriter::new(file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    write_atomic(path, &bytes)
}

/// A folder built under a temporary name and moved into place by [`AtomicDir::commit`].
///
/// Dropping it without committing removes the partial folder, so an interrupted
/// run leaves nothing at the final path.
#[derive(Debug)]
pub struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl AtomicDir {
    /// Starts building `dest`; the work happens in a sibling `*.partial-<pid>` folder.
    pub fn new(dest: &Path) -> Result<Self> {
        let tmp = temp_sibling(dest, "partial")?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Replaces `dest` with the finished folder.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.dest.exists() {
            let old = temp_sibling(&self.dest, "old")?;
            fs::rename(&self.dest, &old).map_err(|e| io_err(&self.dest, e))?;
            fs::rename(&self.tmp, &self.dest).map_err(|e| io_err(&self.dest, e))?;
            fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
        } else {
            fs::rename(&self.tmp, &self.dest).map_err(|e| io_err(&self.dest, e))?;
        }
        // Make the rename itself durable.
        if let Some(parent) = self.dest.parent() {
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_dir_only_appears_on_commit() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        {
            let d = AtomicDir::new(&dest).unwrap();
            fs::write(d.path().join("x"), b"1").unwrap();
            assert!(!dest.exists());
        }
        assert!(!dest.exists(), "dropped without commit leaves nothing");
        let d = AtomicDir::new(&dest).unwrap();
        fs::write(d.path().join("x"), b"2").unwrap();
        d.commit().unwrap();
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"2");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_writer_leaves_no_file() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("f");
        let r = write_atomic_with(&p, |_| Err(io::Error::other("boom")));
        assert!(r.is_err());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
