//! Offset checkpoint files (`recovery-point-offset-checkpoint`, `cleaner-offset-checkpoint`):
//! one offset per partition directory, written atomically (temp file, fsync, rename, fsync dir)
//! and guarded by a CRC-32 so a damaged file is detected rather than trusted.
//!
//! Format (text, so operators can read it):
//! ```text
//! 1                      version
//! 2                      number of entries
//! orders-0 1200          <partition dir> <offset>
//! orders-1 877
//! crc32 1a2b3c4d         CRC-32 of every byte above this line
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError, Result};

const VERSION: &str = "1";

/// A checkpoint file: partition directory name → offset.
#[derive(Debug, Clone)]
pub struct OffsetCheckpointFile {
    path: PathBuf,
}

impl OffsetCheckpointFile {
    /// The checkpoint at `path` (need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        OffsetCheckpointFile { path: path.into() }
    }

    /// Reads the entries; a missing file is empty. A damaged file is an error naming the file.
    pub fn read(&self) -> Result<BTreeMap<String, i64>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).at(&self.path),
        };
        let corrupt = |reason: &str| LogError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_owned(),
        };
        let body_end = text
            .rfind("crc32 ")
            .ok_or_else(|| corrupt("missing crc32 line"))?;
        let (body, crc_line) = text.split_at(body_end);
        let expected = u32::from_str_radix(crc_line.trim_start_matches("crc32 ").trim(), 16)
            .map_err(|_| corrupt("unreadable crc32 line"))?;
        if crc32fast::hash(body.as_bytes()) != expected {
            return Err(corrupt("CRC mismatch"));
        }
        let mut lines = body.lines();
        if lines.next() != Some(VERSION) {
            return Err(corrupt("unknown version"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| corrupt("missing entry count"))?;
        let mut out = BTreeMap::new();
        for line in lines {
            let (name, offset) = line.rsplit_once(' ').ok_or_else(|| corrupt("bad entry"))?;
            let offset = offset.parse().map_err(|_| corrupt("bad offset"))?;
            out.insert(name.to_owned(), offset);
        }
        if out.len() != count {
            return Err(corrupt("entry count mismatch"));
        }
        Ok(out)
    }

    /// Replaces the file's contents atomically.
    pub fn write(&self, entries: &BTreeMap<String, i64>) -> Result<()> {
        let mut body = format!("{VERSION}\n{}\n", entries.len());
        for (name, offset) in entries {
            body.push_str(&format!("{name} {offset}\n"));
        }
        let crc = crc32fast::hash(body.as_bytes());
        body.push_str(&format!("crc32 {crc:08x}\n"));
        write_atomically(&self.path, body.as_bytes())
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new contents.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let f = std::fs::File::create(&tmp).at(&tmp)?;
        crate::fsio::write_all_at(&f, &tmp, bytes, 0).at(&tmp)?;
        crate::fsio::sync(&f, &tmp, true).at(&tmp)?;
    }
    crate::fsio::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        crate::log::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let file = OffsetCheckpointFile::new(dir.path().join("recovery-point-offset-checkpoint"));
        assert!(file.read().unwrap().is_empty());
        let entries: BTreeMap<String, i64> = [
            ("orders-0".to_owned(), 12),
            ("my-topic-11".to_owned(), 9_000_000_000),
        ]
        .into_iter()
        .collect();
        file.write(&entries).unwrap();
        assert_eq!(file.read().unwrap(), entries);
        let path = dir.path().join("recovery-point-offset-checkpoint");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("orders-0 12", "orders-0 13");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(file.read(), Err(LogError::Corrupt { .. })));
    }
}
