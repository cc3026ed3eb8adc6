//! Atomic file and folder writes: a crash never leaves a half-written output that
//! looks complete.
//!
//! Files are written to a sibling temporary path and renamed into place; folders
//! are built under a sibling `*.partial-<pid>` folder and renamed when complete.
//!
//! ## Temporaries and their clean-up
//!
//! Every temporary is named after its target and the writer's process id:
//!
//! | temporary | made by |
//! |---|---|
//! | `<name>.tmp-<pid>` | [`write_atomic`] / [`write_atomic_with`] (e.g. `metrics.jsonl.tmp-<pid>`, `model.safetensors.tmp-<pid>`) |
//! | `<name>.partial-<pid>/` | [`AtomicDir`] (e.g. `SHARDS.partial-<pid>/`, `checkpoints/step-00000100.partial-<pid>/`) |
//! | `<name>.old-<pid>/` | [`AtomicDir::commit`] while it replaces an existing folder |
//!
//! A process killed mid-write leaves its temporary behind. [`remove_stale_temporaries`]
//! removes those whose writer is gone ([`parse_temporary`] reads the name,
//! [`process_alive`] decides): [`write_atomic`] does it for the `.tmp-<pid>` files of
//! its target before writing and [`AtomicDir::new`] for the `.partial-<pid>` folders
//! of its destination, so the next run in that folder cleans up. A temporary of a
//! live process (this one included) is never touched. `.old-<pid>` folders (left only
//! by a crash between the two renames of a commit, when they hold the last complete
//! version) are never removed automatically. Liveness is that of this machine's
//! process table: on a folder shared between machines, a writer running on another
//! host looks gone.

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

fn temp_sibling(path: &Path, kind: TempKind) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::InvalidPath {
        path: path.to_path_buf(),
        reason: "has no file name".into(),
    })?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".{}-{}", kind.tag(), std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// The kind of a temporary written by this module (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempKind {
    /// `<name>.tmp-<pid>`: a file being written by [`write_atomic`].
    File,
    /// `<name>.partial-<pid>`: a folder being built by [`AtomicDir`].
    Partial,
    /// `<name>.old-<pid>`: the previous folder while [`AtomicDir::commit`] replaces it.
    Old,
}

impl TempKind {
    fn tag(self) -> &'static str {
        match self {
            TempKind::File => "tmp",
            TempKind::Partial => "partial",
            TempKind::Old => "old",
        }
    }
}

/// A temporary's name, split: the target it stands for, its kind and its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporary<'a> {
    /// The file or folder name it is written for (`metrics.jsonl`, `step-00000100`).
    pub target: &'a str,
    /// Which writer makes it.
    pub kind: TempKind,
    /// The process id of the writer.
    pub pid: u32,
}

/// Parses a temporary's file name (`<target>.tmp-<pid>`, `<target>.partial-<pid>`,
/// `<target>.old-<pid>`); `None` for any other name.
///
/// ```
/// use mome_data::fsutil::{parse_temporary, TempKind};
///
/// let t = parse_temporary("metrics.jsonl.tmp-4242").unwrap();
/// assert_eq!((t.target, t.kind, t.pid), ("metrics.jsonl", TempKind::File, 4242));
/// let t = parse_temporary("step-00000100.partial-7").unwrap();
/// assert_eq!((t.target, t.kind), ("step-00000100", TempKind::Partial));
/// assert!(parse_temporary("model.safetensors").is_none());
/// assert!(parse_temporary("notes.tmp-x1").is_none());
/// ```
pub fn parse_temporary(name: &str) -> Option<Temporary<'_>> {
    let (rest, pid) = name.rsplit_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    let (target, tag) = rest.rsplit_once('.')?;
    let kind = [TempKind::File, TempKind::Partial, TempKind::Old]
        .into_iter()
        .find(|k| k.tag() == tag)?;
    if target.is_empty() {
        return None;
    }
    Some(Temporary { target, kind, pid })
}

/// Whether process `pid` is alive on this machine. On Linux this reads `/proc/<pid>`
/// (a zombie counts as gone); where liveness cannot be told (no `/proc`, another OS)
/// every process counts as alive, so nothing is removed on a guess.
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if pid == 0 || !Path::new("/proc/self").exists() {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: Z zombie, X dead.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

/// Removes the temporaries in `dir` (see the [module docs](self)) that `select`
/// accepts and whose writer process is gone; returns what was removed, sorted.
/// Temporaries of live processes, and every other entry, are left alone. A missing
/// `dir` holds nothing to remove.
///
/// ```
/// use mome_data::fsutil::remove_stale_temporaries;
///
/// let dir = tempfile::tempdir().unwrap();
/// // A temporary of this (live) process is kept.
/// let mine = dir.path().join(format!("a.json.tmp-{}", std::process::id()));
/// std::fs::write(&mine, b"").unwrap();
/// let removed = remove_stale_temporaries(dir.path(), |t| t.target == "a.json").unwrap();
/// assert!(removed.is_empty() && mine.exists());
/// ```
pub fn remove_stale_temporaries(
    dir: &Path,
    select: impl Fn(&Temporary<'_>) -> bool,
) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(t) = name.to_str().and_then(parse_temporary) else {
            continue;
        };
        if !select(&t) || process_alive(t.pid) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map_err(|e| io_err(&path, e))?.is_dir();
        let r = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match r {
            Ok(()) => removed.push(path),
            // Another process cleaned it up first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Best-effort clean-up of the stale temporaries of kind `kind` of `path` (its own
/// name only): failing to remove garbage must not fail the write that follows.
fn clean_stale_siblings(path: &Path, kind: TempKind) {
    let (Some(name), Some(parent)) = (path.file_name().and_then(|n| n.to_str()), path.parent())
    else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let _ = remove_stale_temporaries(parent, |t| t.kind == kind && t.target == name);
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

/// Writes a file atomically through a caller-supplied writer function. Stale
/// temporaries of `path` left by killed writers are removed first.
pub fn write_atomic_with<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
{
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    clean_stale_siblings(path, TempKind::File);
    let tmp = temp_sibling(path, TempKind::File)?;
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
    /// Stale `*.partial-<pid>` folders of `dest` left by killed writers are removed
    /// first.
    pub fn new(dest: &Path) -> Result<Self> {
        clean_stale_siblings(dest, TempKind::Partial);
        let tmp = temp_sibling(dest, TempKind::Partial)?;
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
            let old = temp_sibling(&self.dest, TempKind::Old)?;
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

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    /// A live process other than this one, killed on drop.
    struct Live(std::process::Child);

    impl Live {
        fn start() -> Self {
            Live(
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap(),
            )
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn parses_the_temporaries_this_module_makes() {
        let root = tempfile::tempdir().unwrap();
        let f = temp_sibling(&root.path().join("m.jsonl"), TempKind::File).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        let t = parse_temporary(name).unwrap();
        assert_eq!(
            (t.target, t.kind, t.pid),
            ("m.jsonl", TempKind::File, std::process::id())
        );
        let d = temp_sibling(&root.path().join("step-00000004"), TempKind::Partial).unwrap();
        let t = parse_temporary(d.file_name().unwrap().to_str().unwrap()).unwrap();
        assert_eq!((t.target, t.kind), ("step-00000004", TempKind::Partial));
        for other in [
            "a.tmp",
            "a.tmp-",
            "a.tmp-12x",
            ".tmp-12",
            "a.partial12",
            "a-12",
        ] {
            assert!(parse_temporary(other).is_none(), "{other}");
        }
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(dead_pid()));
        let live = Live::start();
        assert!(process_alive(live.pid()));
    }

    #[test]
    fn writers_remove_stale_temporaries_of_their_target_only() {
        let root = tempfile::tempdir().unwrap();
        let (dead, live) = (dead_pid(), Live::start());
        let at = |name: &str| root.path().join(name);
        let stale = at(&format!("m.jsonl.tmp-{dead}"));
        let running = at(&format!("m.jsonl.tmp-{}", live.pid()));
        let other_target = at(&format!("n.jsonl.tmp-{dead}"));
        let other_kind = at(&format!("m.jsonl.old-{dead}"));
        for p in [&stale, &running, &other_target, &other_kind] {
            fs::write(p, b"x").unwrap();
        }
        write_atomic(&at("m.jsonl"), b"{}").unwrap();
        assert!(!stale.exists(), "the dead writer's temporary is removed");
        assert!(running.exists(), "a live writer's temporary is kept");
        assert!(other_target.exists() && other_kind.exists());

        let stale_dir = at(&format!("out.partial-{dead}"));
        let running_dir = at(&format!("out.partial-{}", live.pid()));
        for d in [&stale_dir, &running_dir] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/f"), b"x").unwrap();
        }
        let d = AtomicDir::new(&at("out")).unwrap();
        assert!(
            !stale_dir.exists(),
            "the dead writer's partial folder is removed"
        );
        assert!(
            running_dir.exists(),
            "a live writer's partial folder is kept"
        );
        d.commit().unwrap();

        // The helper itself, with a selection, reports what it removed.
        let stale_n = at(&format!("n.jsonl.tmp-{dead}"));
        let removed = remove_stale_temporaries(root.path(), |t| t.target == "n.jsonl").unwrap();
        assert_eq!(removed, vec![stale_n]);
        assert!(remove_stale_temporaries(&at("missing"), |_| true)
            .unwrap()
            .is_empty());
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
