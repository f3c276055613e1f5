//! Helpers shared by the fuzz targets in `fuzz_targets/` (see docs/fuzzing.md). Each target calls
//! the production decoder; this crate only supplies scratch directories for the decoders that read
//! files, and a tiny cursor for targets that take several values from one input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// An empty directory for this input, always the same path within one process. It lives on
/// `/dev/shm` when there is one, so fsyncs cost nothing and the disk is not worn.
pub fn scratch_dir() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let dir = BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        root.join(format!("drover-fuzz-{}", std::process::id()))
    });
    clear(dir);
    dir
}

/// Removes everything in `dir` and leaves it empty (creating it if needed).
pub fn clear(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clear scratch dir {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("cannot create scratch dir {}: {e}", dir.display()));
}

/// Takes values off the front of a fuzz input; missing bytes read as zero.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    pub fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
