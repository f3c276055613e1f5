//! Snapshots: one file per snapshot, `snapshot.<zxid hex>`, holding the caller's opaque bytes
//! followed by a trailer `[zxid: u64 LE][payload length: u64 LE][crc32: u32 LE][magic]`. The CRC
//! covers the payload, then the zxid and length fields.
//!
//! A snapshot is written to `snapshot.<zxid hex>.tmp`, fsynced, renamed and the directory fsynced,
//! so a crash leaves either no snapshot or a complete one. [`purge`] bounds the disk: it keeps the
//! newest N valid snapshots and the log files needed to replay from the oldest of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Result, StorageError, file_name, fsync_dir, io_err, list_numbered};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"DRVSNP01";
/// zxid (8) + payload length (8) + crc32 (4) + magic (8).
pub const SNAPSHOT_TRAILER_BYTES: u64 = 28;
/// How many valid snapshots [`purge`] keeps unless told otherwise (ZooKeeper's
/// `autopurge.snapRetainCount`).
pub const SNAPSHOTS_TO_KEEP_DEFAULT: usize = 3;

pub(crate) const SNAPSHOT_PREFIX: &str = "snapshot";
const TMP_SUFFIX: &str = ".tmp";
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Writes one snapshot. Feed it bytes through [`Write`], then call [`SnapshotWriter::finish`].
/// Dropping it unfinished deletes the temporary file.
pub struct SnapshotWriter {
    dir: PathBuf,
    zxid: u64,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl SnapshotWriter {
    /// Starts `snapshot.<zxid hex>.tmp` in `dir` (replacing a stale one).
    pub fn create(dir: &Path, zxid: u64) -> Result<SnapshotWriter> {
        let tmp_path = dir.join(format!("{}{TMP_SUFFIX}", file_name(SNAPSHOT_PREFIX, zxid)));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io_err(&tmp_path))?;
        Ok(SnapshotWriter {
            dir: dir.to_path_buf(),
            zxid,
            tmp_path,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }

    /// Appends the trailer, fsyncs, renames to `snapshot.<zxid hex>` and fsyncs the directory.
    pub fn finish(mut self) -> Result<()> {
        let Some(out) = self.out.take() else {
            unreachable!("SnapshotWriter::out is only taken by finish and drop");
        };
        let result = self.finish_inner(out);
        if result.is_err() {
            // Best effort; open deletes it otherwise.
            let _ = fs::remove_file(&self.tmp_path);
        }
        result
    }

    fn finish_inner(&self, mut out: BufWriter<File>) -> Result<()> {
        let tmp_path = &self.tmp_path;
        let mut crc = self.crc.clone();
        let trailer_fields = trailer_fields(self.zxid, self.len);
        crc.update(&trailer_fields);
        let mut trailer = Vec::with_capacity(SNAPSHOT_TRAILER_BYTES as usize);
        trailer.extend_from_slice(&trailer_fields);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        trailer.extend_from_slice(SNAPSHOT_MAGIC);
        out.write_all(&trailer).map_err(io_err(tmp_path))?;
        let file = out.into_inner().map_err(|e| StorageError::Io {
            path: tmp_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(tmp_path))?;
        drop(file);
        let final_path = self.dir.join(file_name(SNAPSHOT_PREFIX, self.zxid));
        fs::rename(tmp_path, &final_path).map_err(io_err(&final_path))?;
        fsync_dir(&self.dir)?;
        tracing::info!(file = %final_path.display(), zxid = self.zxid, bytes = self.len, "snapshot written");
        Ok(())
    }
}

fn trailer_fields(zxid: u64, len: u64) -> [u8; 16] {
    let mut fields = [0u8; 16];
    fields[..8].copy_from_slice(&zxid.to_le_bytes());
    fields[8..].copy_from_slice(&len.to_le_bytes());
    fields
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(out) = self.out.as_mut() else {
            return Err(io::Error::other("snapshot writer already finished"));
        };
        let n = out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            // Unfinished: the temporary file is garbage. Open would delete it anyway.
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Deletes `snapshot.*.tmp` files left by a crash. Returns how many it deleted.
pub(crate) fn remove_stray_tmp(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(&format!("{SNAPSHOT_PREFIX}.")) && name.ends_with(TMP_SUFFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            tracing::warn!(file = %path.display(), "deleted unfinished snapshot");
            removed += 1;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// The newest snapshot in `dir` whose trailer and CRC verify, as `(zxid, payload)`. Snapshots that
/// fail verification are skipped with a warning. I/O errors are returned, not skipped.
pub fn load_latest(dir: &Path) -> Result<Option<(u64, Vec<u8>)>> {
    for (zxid, path) in list_numbered(dir, SNAPSHOT_PREFIX)?.into_iter().rev() {
        let mut payload = Vec::new();
        match read_snapshot(&path, zxid, Some(&mut payload))? {
            Ok(()) => return Ok(Some((zxid, payload))),
            Err(reason) => {
                tracing::warn!(file = %path.display(), zxid, %reason, "skipping invalid snapshot");
            }
        }
    }
    Ok(None)
}

/// Checks the snapshot at `path`, streaming it; when `payload` is given, fills it with the
/// snapshot's bytes. The inner `Err` is why the snapshot is invalid.
fn read_snapshot(
    path: &Path,
    zxid: u64,
    mut payload: Option<&mut Vec<u8>>,
) -> Result<Result<(), String>> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    if file_len < SNAPSHOT_TRAILER_BYTES {
        return Ok(Err(format!("{file_len} bytes is shorter than the trailer")));
    }
    let payload_len = file_len - SNAPSHOT_TRAILER_BYTES;
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES as usize];
    file.seek(SeekFrom::Start(payload_len))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(io_err(path))?;
    let (fields, rest) = trailer.split_at(16);
    let (crc_bytes, magic) = rest.split_at(4);
    if magic != SNAPSHOT_MAGIC {
        return Ok(Err("bad trailer magic".to_string()));
    }
    if fields != trailer_fields(zxid, payload_len) {
        return Ok(Err(format!(
            "trailer does not match zxid {zxid:#x} and length {payload_len}"
        )));
    }
    let expected_crc = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);

    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file.take(payload_len));
    let mut crc = crc32fast::Hasher::new();
    if let Some(payload) = payload.as_deref_mut() {
        payload.clear();
        payload
            .try_reserve_exact(payload_len as usize)
            .map_err(|e| StorageError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::OutOfMemory, e),
            })?;
    }
    let mut read = 0u64;
    loop {
        let chunk = reader.fill_buf().map_err(io_err(path))?;
        if chunk.is_empty() {
            break;
        }
        crc.update(chunk);
        if let Some(payload) = payload.as_deref_mut() {
            payload.extend_from_slice(chunk);
        }
        let n = chunk.len();
        read += n as u64;
        reader.consume(n);
    }
    if read != payload_len {
        return Ok(Err(format!("read {read} of {payload_len} payload bytes")));
    }
    crc.update(fields);
    if crc.finalize() != expected_crc {
        return Ok(Err("crc mismatch".to_string()));
    }
    Ok(Ok(()))
}

/// What [`purge`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Zxids of the valid snapshots kept, newest first.
    pub snapshots_kept: Vec<u64>,
    pub snapshots_deleted: Vec<PathBuf>,
    pub logs_deleted: Vec<PathBuf>,
}

/// Keeps the newest `snapshots_to_keep` valid snapshots, deletes every older snapshot file and
/// every log file whose records are all at or below the oldest kept snapshot's zxid, so that
/// recovery from any kept snapshot still finds every later record. With fewer valid snapshots than
/// asked for it deletes nothing. Never deletes the last log file, nor invalid snapshots newer than
/// the oldest kept one.
///
/// A log file `log.<a>` followed by `log.<b>` holds only zxids in `[a, b)`, so it is redundant iff
/// `b <= oldest_kept + 1`. Run it on the thread that owns the [`super::TxnLog`]: it must not race
/// with [`super::TxnLog::read_from`] or [`super::TxnLog::truncate_after`].
pub fn purge(dir: &Path, snapshots_to_keep: usize) -> Result<PurgeReport> {
    if snapshots_to_keep == 0 {
        return Err(StorageError::InvalidOption {
            path: dir.to_path_buf(),
            name: "snapshots_to_keep",
            reason: "must be at least 1".to_string(),
        });
    }
    let mut report = PurgeReport::default();
    let snapshots = list_numbered(dir, SNAPSHOT_PREFIX)?;
    for (zxid, path) in snapshots.iter().rev() {
        if report.snapshots_kept.len() == snapshots_to_keep {
            break;
        }
        match read_snapshot(path, *zxid, None)? {
            Ok(()) => report.snapshots_kept.push(*zxid),
            Err(reason) => {
                tracing::warn!(file = %path.display(), zxid, %reason, "purge: invalid snapshot, not counted");
            }
        }
    }
    if report.snapshots_kept.len() < snapshots_to_keep {
        tracing::debug!(
            dir = %dir.display(),
            valid = report.snapshots_kept.len(),
            snapshots_to_keep,
            "purge: too few valid snapshots, nothing deleted"
        );
        return Ok(report);
    }
    let Some(&oldest_kept) = report.snapshots_kept.last() else {
        return Ok(report);
    };

    // Snapshots before logs: a crash in between leaves extra log files (harmless), never an old
    // snapshot whose following logs are gone.
    for (zxid, path) in &snapshots {
        if *zxid < oldest_kept {
            fs::remove_file(path).map_err(io_err(path))?;
            report.snapshots_deleted.push(path.clone());
        }
    }
    let logs = list_numbered(dir, super::log::LOG_PREFIX)?;
    for pair in logs.windows(2) {
        let [(_, path), (next_first, _)] = pair else {
            continue;
        };
        if *next_first <= oldest_kept.saturating_add(1) {
            fs::remove_file(path).map_err(io_err(path))?;
            report.logs_deleted.push(path.clone());
        } else {
            break;
        }
    }
    if !report.snapshots_deleted.is_empty() || !report.logs_deleted.is_empty() {
        fsync_dir(dir)?;
        tracing::info!(
            dir = %dir.display(),
            oldest_kept,
            snapshots_deleted = report.snapshots_deleted.len(),
            logs_deleted = report.logs_deleted.len(),
            "purged old snapshots and logs"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::{LogOptions, TxnLog};
    use super::*;

    fn write_snapshot(dir: &Path, zxid: u64, payload: &[u8]) {
        let mut w = SnapshotWriter::create(dir, zxid).unwrap();
        w.write_all(payload).unwrap();
        w.finish().unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x40;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn snapshot_round_trips_and_newest_wins() {
        // A finished snapshot reads back byte for byte, the newest one is returned, and an empty
        // payload is a valid snapshot.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_latest(dir.path()).unwrap(), None);
        write_snapshot(dir.path(), 5, b"");
        assert_eq!(load_latest(dir.path()).unwrap(), Some((5, vec![])));
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        write_snapshot(dir.path(), 0x1_0000_0002, &big);
        assert_eq!(load_latest(dir.path()).unwrap(), Some((0x1_0000_0002, big)));
        assert_eq!(
            names(dir.path()),
            vec!["snapshot.0000000000000005", "snapshot.0000000100000002"]
        );
    }

    #[test]
    fn corrupt_newest_snapshot_falls_back_to_previous() {
        // A bit flip in the payload, a truncated file or a renamed file each make load_latest skip
        // that snapshot and return the next older valid one.
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 10, b"ten");
        write_snapshot(dir.path(), 20, b"twenty");
        let newest = dir.path().join("snapshot.0000000000000014");
        flip_byte(&newest, 2);
        assert_eq!(
            load_latest(dir.path()).unwrap(),
            Some((10, b"ten".to_vec()))
        );

        // Truncated (e.g. copied halfway): trailer missing.
        write_snapshot(dir.path(), 30, b"thirty");
        let path30 = dir.path().join("snapshot.000000000000001e");
        let len = fs::metadata(&path30).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path30)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert_eq!(
            load_latest(dir.path()).unwrap(),
            Some((10, b"ten".to_vec()))
        );

        // A valid snapshot under the wrong name is not trusted.
        fs::copy(
            dir.path().join("snapshot.000000000000000a"),
            dir.path().join("snapshot.0000000000000028"),
        )
        .unwrap();
        assert_eq!(
            load_latest(dir.path()).unwrap(),
            Some((10, b"ten".to_vec()))
        );

        // Tiny garbage file.
        fs::write(dir.path().join("snapshot.0000000000000032"), b"x").unwrap();
        assert_eq!(
            load_latest(dir.path()).unwrap(),
            Some((10, b"ten".to_vec()))
        );
    }

    #[test]
    fn unfinished_snapshot_leaves_nothing() {
        // A writer dropped before finish leaves no snapshot, and a stray .tmp from a crash is
        // ignored by load_latest and deleted by remove_stray_tmp (called by TxnLog::open).
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = SnapshotWriter::create(dir.path(), 7).unwrap();
            w.write_all(b"partial").unwrap();
        }
        assert!(names(dir.path()).is_empty());
        fs::write(dir.path().join("snapshot.0000000000000007.tmp"), b"crash").unwrap();
        assert_eq!(load_latest(dir.path()).unwrap(), None);
        assert_eq!(remove_stray_tmp(dir.path()).unwrap(), 1);
        assert!(names(dir.path()).is_empty());
    }

    fn append_all(log: &mut TxnLog, zxids: impl IntoIterator<Item = u64>) {
        for z in zxids {
            log.append(z, &z.to_le_bytes()).unwrap();
        }
        log.sync().unwrap();
    }

    #[test]
    fn purge_keeps_n_snapshots_and_exactly_the_logs_needed() {
        // Log files [1..10] [10..20] [20..30] [30..40] [40..]; snapshots at 9, 19, 20, 35.
        // Keeping 3 keeps 35, 20, 19 (oldest kept 19): the first file (records < 10 <= 20) goes,
        // the second (next file starts at 20 = 19 + 1, so all its records are <= 19) goes too,
        // the third (holds 20..29 > 19) stays. Every record after 19 is still recoverable.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = TxnLog::open(dir.path(), LogOptions::default()).unwrap();
        append_all(&mut log, 1..10);
        log.roll(10).unwrap();
        write_snapshot(dir.path(), 9, b"s9");
        append_all(&mut log, 10..20);
        log.roll(20).unwrap();
        write_snapshot(dir.path(), 19, b"s19");
        append_all(&mut log, 20..30);
        write_snapshot(dir.path(), 20, b"s20");
        log.roll(30).unwrap();
        append_all(&mut log, 30..40);
        log.roll(40).unwrap();
        append_all(&mut log, 40..45);
        write_snapshot(dir.path(), 35, b"s35");

        let report = purge(dir.path(), 3).unwrap();
        assert_eq!(report.snapshots_kept, vec![35, 20, 19]);
        let file_names = |paths: &[PathBuf]| -> Vec<String> {
            paths
                .iter()
                .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            file_names(&report.snapshots_deleted),
            vec!["snapshot.0000000000000009"]
        );
        assert_eq!(
            file_names(&report.logs_deleted),
            vec!["log.0000000000000001", "log.000000000000000a"]
        );
        assert_eq!(
            names(dir.path()),
            vec![
                "log.0000000000000014",
                "log.000000000000001e",
                "log.0000000000000028",
                "snapshot.0000000000000013",
                "snapshot.0000000000000014",
                "snapshot.0000000000000023",
            ]
        );
        drop(log);

        // Recovery from each kept snapshot still finds every later record: break the newer ones
        // one by one.
        for (broken, expect_snapshot) in [(35u64, 20u64), (20, 19)] {
            flip_byte(&dir.path().join(format!("snapshot.{broken:016x}")), 0);
            let (_, rec) = TxnLog::open(dir.path(), LogOptions::default()).unwrap();
            assert_eq!(rec.snapshot.as_ref().map(|s| s.0), Some(expect_snapshot));
            let zxids: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
            assert_eq!(zxids, ((expect_snapshot + 1)..45).collect::<Vec<_>>());
        }

        // Purging again with the two newest broken: only one valid snapshot, so nothing goes.
        let report = purge(dir.path(), 3).unwrap();
        assert_eq!(report.snapshots_kept, vec![19]);
        assert!(report.snapshots_deleted.is_empty() && report.logs_deleted.is_empty());
    }

    #[test]
    fn purge_boundary_is_next_file_start_minus_one() {
        // With files [1..10] and [10..], a snapshot at 8 keeps the first file (it holds 9) and a
        // snapshot at 9 lets it go. The last log file is never deleted, however old.
        for (snap, first_deleted) in [(8u64, false), (9, true)] {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = TxnLog::open(dir.path(), LogOptions::default()).unwrap();
            append_all(&mut log, 1..10);
            log.roll(10).unwrap();
            append_all(&mut log, 10..12);
            write_snapshot(dir.path(), snap, b"s");
            let report = purge(dir.path(), 1).unwrap();
            assert_eq!(
                report.logs_deleted.len(),
                usize::from(first_deleted),
                "snap {snap}"
            );
            drop(log);
            let (_, rec) = TxnLog::open(dir.path(), LogOptions::default()).unwrap();
            let zxids: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
            assert_eq!(zxids, ((snap + 1)..12).collect::<Vec<_>>());
        }

        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = TxnLog::open(dir.path(), LogOptions::default()).unwrap();
        append_all(&mut log, 1..5);
        write_snapshot(dir.path(), 100, b"s");
        let report = purge(dir.path(), 1).unwrap();
        assert!(report.logs_deleted.is_empty());
        assert_eq!(names(dir.path()).len(), 2);
    }

    #[test]
    fn purge_rejects_zero() {
        // snapshots_to_keep = 0 would delete the log a recovery needs, so it is an error.
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            purge(dir.path(), 0),
            Err(StorageError::InvalidOption {
                name: "snapshots_to_keep",
                ..
            })
        ));
    }
}
