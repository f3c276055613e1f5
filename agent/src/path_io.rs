//! One error for an I/O failure on a named path, shared by the agent's error enums.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What was being done (`op`), to which `path`, and the I/O error it met.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct PathIoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PathIoError {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `map_err` adapter: `f.read(..).map_err(io_err("read", &path))?`, which `?` turns into any error
/// that wraps a [`PathIoError`].
pub fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PathIoError + 'a {
    move |source| PathIoError::new(op, path, source)
}

/// fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), PathIoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

/// Mode of the agent's private directories (checkpoints, records): root only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the agent's private files.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of the directories on the path from the work dir to a task's sandbox: others may pass
/// through (a task reaches its own sandbox by its path) but not list them (it cannot find its
/// neighbours').
pub const PASS_THROUGH_DIR_MODE: u32 = 0o711;

/// Sets the mode of `path` to exactly `mode` (the umask does not apply to `chmod`).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), PathIoError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Creates `dir` (and missing parents) if needed and gives it exactly `mode`, also when it
/// already existed with another one.
pub fn ensure_dir_mode(dir: &Path, mode: u32) -> Result<(), PathIoError> {
    fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
    set_mode(dir, mode)
}
