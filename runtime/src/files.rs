//! Files the tools write: whole or not at all, never over one of their own inputs, and standard output
//! whose failures are reported.
//!
//! - [`write_atomic`] writes a temporary file in the target's folder, flushes it to disk and renames it
//!   over the target, so a reader (or a memory-mapped plan) sees the old file or the new one, never a
//!   half-written one, and a failed or interrupted write leaves the old file as it was.
//! - [`same_file`] tells whether an output path names an input, so `-o` cannot overwrite it.
//! - [`stdout`] is standard output as a [`File`]: a write to a closed or broken stdout is an error
//!   instead of being dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is then flushed
/// to disk (`fsync`) and renamed over `path`; the folder is flushed too where the system allows. On any
/// error, from `write` or from the file system, the temporary file is removed and `path` is left as it
/// was. An existing target's permissions are kept. A symbolic link at `path` is replaced by the file,
/// not followed.
pub fn write_atomic<T>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>,
) -> io::Result<T> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (file, temp) = create_temp(dir, path)?;
    let temp = RemoveOnDrop(Some(temp));
    let mut writer = BufWriter::new(file);
    let value = write(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    let temp_path = temp.0.as_deref().expect("set above");
    if let Ok(meta) = fs::metadata(path) {
        // Best effort: a target the user made read-only for others stays so.
        let _ = fs::set_permissions(temp_path, meta.permissions());
    }
    fs::rename(temp_path, path)?;
    std::mem::forget(temp);
    sync_dir(dir);
    Ok(value)
}

/// A new, empty temporary file in `dir` named after `target` (`.NAME.PID-N.tmp`).
fn create_temp(dir: &Path, target: &Path) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(
            ".{}.{}-{n}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((file, temp)),
            // Left by a process that was killed; pick another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the file it holds when dropped (an error or a panic before the rename).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Flushes a folder's entries (the rename) to disk; a no-op where folders cannot be opened.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Whether `a` and `b` name the same existing file: the same device and inode on Unix (so hard links
/// and symbolic links count), the same canonical path elsewhere. False when either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (fs::canonicalize(a), fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Fails with a message naming both if `output` is one of `inputs` (each with what it is, e.g. "the
/// model"), so that writing the output cannot destroy an input.
pub fn refuse_overwriting_inputs(output: &Path, inputs: &[(&str, &Path)]) -> crate::Result<()> {
    match inputs.iter().find(|(_, input)| same_file(output, input)) {
        Some((what, input)) => Err(crate::Error::invalid(format!(
            "the output file {} is {what} {}; write to another file",
            output.display(),
            input.display()
        ))),
        None => Ok(()),
    }
}

/// Standard output as this process received it: `None` when it was closed.
static STDOUT: OnceLock<Option<File>> = OnceLock::new();

/// Records standard output as it is now. Rust's runtime reopens a closed stdout on `/dev/null` before
/// `main`, after which nothing tells the two apart, so a program calls this before `main` (see
/// [`capture_stdout_before_main!`](crate::capture_stdout_before_main)); otherwise the first call to
/// [`stdout`] records it.
pub fn capture_stdout() {
    STDOUT.get_or_init(|| duplicate_stdout(&io::stdout()));
}

#[cfg(unix)]
fn duplicate_stdout(stdout: &io::Stdout) -> Option<File> {
    use std::os::fd::AsFd;
    stdout.as_fd().try_clone_to_owned().ok().map(File::from)
}

#[cfg(windows)]
fn duplicate_stdout(stdout: &io::Stdout) -> Option<File> {
    use std::os::windows::io::AsHandle;
    stdout.as_handle().try_clone_to_owned().ok().map(File::from)
}

#[cfg(not(any(unix, windows)))]
fn duplicate_stdout(_: &io::Stdout) -> Option<File> {
    None
}

/// Standard output as a [`File`], whose writes fail on a closed stdout or a broken pipe (Rust's own
/// `stdout()` drops writes to a closed descriptor). Buffer writes to it and check the flush.
pub fn stdout() -> io::Result<&'static File> {
    capture_stdout();
    STDOUT
        .get()
        .and_then(Option::as_ref)
        .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "standard output is closed"))
}

/// Records standard output before Rust's runtime starts (see [`capture_stdout`]), in a program's
/// main file; on targets without ELF constructors it does nothing and [`stdout`] records it at first
/// use.
#[macro_export]
macro_rules! capture_stdout_before_main {
    () => {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        #[used]
        // SAFETY: an ELF constructor runs before `main`, on the only thread; the function only
        // duplicates file descriptor 1 through std, which needs no runtime set-up.
        #[link_section = ".init_array"]
        static CAPTURE_STDOUT: extern "C" fn() = {
            extern "C" fn capture() {
                $crate::files::capture_stdout();
            }
            capture
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fff-files-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_replaces_the_target() {
        let dir = scratch("replace");
        let target = dir.join("out.txt");
        fs::write(&target, "old").unwrap();
        write_atomic(&target, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(entries(&dir), ["out.txt"]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = scratch("failed");
        let target = dir.join("out.txt");
        fs::write(&target, "old").unwrap();
        let err = write_atomic(&target, |w| {
            w.write_all(&[b'x'; 100_000])?;
            Err::<(), _>(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(entries(&dir), ["out.txt"]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn same_file_sees_through_links_and_spellings() {
        let dir = scratch("same");
        let a = dir.join("a");
        fs::write(&a, "x").unwrap();
        fs::write(dir.join("b"), "x").unwrap();
        assert!(same_file(&a, &dir.join(".").join("a")));
        assert!(!same_file(&a, &dir.join("b")));
        assert!(!same_file(&a, &dir.join("missing")));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&a, dir.join("link")).unwrap();
            assert!(same_file(&a, &dir.join("link")));
        }
        let err = refuse_overwriting_inputs(&a, &[("the model", &dir.join("./a"))]).unwrap_err();
        assert!(err.to_string().contains("is the model"), "{err}");
        let _ = fs::remove_dir_all(dir);
    }
}
