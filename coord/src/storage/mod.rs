//! Durable, byte-level storage of one coord replica: the transaction log (`log`) and snapshots
//! (`snapshot`), both in one directory.
//!
//! This module owns the files in that directory and nothing else: it stores opaque payloads tagged
//! by a strictly increasing `u64` zxid, checks them with CRCs, truncates a torn tail on start and
//! purges what the newest snapshots make redundant. It must not know what a payload means (no
//! `Txn`, no data tree): encoding and applying transactions is the caller's job. It is synchronous
//! (`std::fs`); the driver runs it on a dedicated thread. Start at [`TxnLog::open`], which recovers
//! the newest valid snapshot plus the log records after it, then [`TxnLog::append`] /
//! [`TxnLog::sync`] (group commit), then [`SnapshotWriter`] and [`purge`].
//!
//! Directory layout: `log.<first zxid, 16 hex digits>` and `snapshot.<zxid, 16 hex digits>`, plus a
//! `snapshot.<zxid>.tmp` while a snapshot is being written.

mod log;
mod snapshot;

pub use log::{
    LOG_HEADER_BYTES, LOG_MAGIC, LOG_VERSION, LogOptions, RECORD_BYTES_MAX, RECORD_HEADER_BYTES,
    Recovered, TxnLog,
};
pub use snapshot::{
    PurgeReport, SNAPSHOT_MAGIC, SNAPSHOT_TRAILER_BYTES, SNAPSHOTS_TO_KEEP_DEFAULT, SnapshotWriter,
    load_latest, purge,
};

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Why a storage operation failed. Every variant raised here names the file or directory. Any of
/// these from [`TxnLog`] means the replica must stop (and recover by reopening): the log does not
/// try to carry on after a failed write or fsync.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Data on disk that cannot be explained by a crash: damage before the tail of the last log
    /// file, records out of zxid order, a foreign header. Never repaired automatically.
    #[error("corrupt {file} at byte {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// `append` or `roll` got a zxid that is not above the last one.
    #[error("zxid {zxid:#x} is not above {last_zxid:#x} in {path}")]
    ZxidNotIncreasing {
        path: PathBuf,
        zxid: u64,
        last_zxid: u64,
    },
    #[error("record {zxid:#x} for {path} has {bytes} bytes, over the limit of {max}")]
    RecordTooLarge {
        path: PathBuf,
        zxid: u64,
        bytes: usize,
        max: usize,
    },
    #[error("invalid {name} for {path}: {reason}")]
    InvalidOption {
        path: PathBuf,
        name: &'static str,
        reason: String,
    },
    /// An earlier write or fsync failed, so what reached the disk is unknown; reopen to recover.
    #[error("log in {path} is unusable after an earlier I/O error; reopen it")]
    Poisoned { path: PathBuf },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// `map_err` helper: wraps an `io::Error` with the path it happened on.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes creations, renames and deletions of entries in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// `<prefix>.<zxid as 16 hex digits>`.
pub(crate) fn file_name(prefix: &str, zxid: u64) -> String {
    format!("{prefix}.{zxid:016x}")
}

/// The files in `dir` named exactly `<prefix>.<16 hex digits>`, sorted by zxid. Other names
/// (including `.tmp` files) are skipped.
pub(crate) fn list_numbered(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            continue;
        };
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if let Ok(zxid) = u64::from_str_radix(hex, 16) {
            found.push((zxid, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_numbered_parses_only_exact_names() {
        // Only `<prefix>.<16 hex>` names are listed, in zxid order; tmp files and strangers are not.
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "log.00000000000000ff",
            "log.0000000000000001",
            "log.0000000000000002.tmp",
            "log.123",
            "snapshot.0000000000000003",
            "logx.0000000000000004",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let zxids: Vec<u64> = list_numbered(dir.path(), "log")
            .unwrap()
            .into_iter()
            .map(|(z, _)| z)
            .collect();
        assert_eq!(zxids, vec![1, 0xff]);
        assert_eq!(file_name("log", 0xff), "log.00000000000000ff");
    }
}
