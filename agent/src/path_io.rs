//! One error for an I/O failure on a named path, shared by the agent's error enums.

use std::fs::File;
use std::io;
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
