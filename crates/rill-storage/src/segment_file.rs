//! A segment's `.log` file with a small user-space write buffer.
//!
//! Each `write` system call into the page cache has a fixed cost (about 10 µs on a VM) that
//! dominates small batches: 16 KiB batches written one call each reach about half the speed of
//! the same bytes written in large chunks. Appends therefore go to a buffer of up to
//! [`WRITE_BUFFER_BYTES`], written out when full, and before every fsync, truncation, roll or
//! close. Reads see buffered bytes, so the buffer is invisible to readers.
//!
//! Durability contract: an append is safe against a process crash once [`SegmentFile::write_out`]
//! ran after it (the log's `write_out`), and against a machine crash once an fsync covering it
//! completed (`GroupCommit::wait_durable` or `Log::flush`). Acknowledge only after one of them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::fsio;

/// Largest amount of appended data held in memory before it is written to the file.
pub const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// The `.log` file of a segment.
#[derive(Debug)]
pub struct SegmentFile {
    file: File,
    path: PathBuf,
    pending: Mutex<Pending>,
}

#[derive(Debug)]
struct Pending {
    /// Bytes appended but not yet written to the file; they start at `file_len`.
    buf: Vec<u8>,
    /// Bytes in the file itself.
    file_len: u64,
}

impl SegmentFile {
    /// Wraps an open file whose current length is `file_len`.
    pub(crate) fn new(file: File, path: PathBuf, file_len: u64) -> Self {
        SegmentFile {
            file,
            path,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                file_len,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `bytes` at the end (buffered when small).
    pub(crate) fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut p = self.lock();
        if p.buf.len() + bytes.len() > WRITE_BUFFER_BYTES {
            self.write_locked(&mut p)?;
        }
        if bytes.len() >= WRITE_BUFFER_BYTES {
            fsio::write_all_at(&self.file, &self.path, bytes, p.file_len)?;
            p.file_len += bytes.len() as u64;
        } else {
            if p.buf.capacity() == 0 {
                p.buf.reserve_exact(WRITE_BUFFER_BYTES);
            }
            p.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn write_locked(&self, p: &mut Pending) -> std::io::Result<()> {
        if !p.buf.is_empty() {
            fsio::write_all_at(&self.file, &self.path, &p.buf, p.file_len)?;
            p.file_len += p.buf.len() as u64;
            p.buf.clear();
        }
        Ok(())
    }

    /// Writes buffered bytes to the file (page cache) and releases the buffer's memory.
    pub fn write_out(&self) -> std::io::Result<()> {
        let mut p = self.lock();
        self.write_locked(&mut p)?;
        p.buf = Vec::new();
        Ok(())
    }

    /// Writes buffered bytes and fsyncs the file's data.
    pub fn sync(&self) -> std::io::Result<()> {
        self.write_out()?;
        fsio::sync(&self.file, &self.path, false)
    }

    /// fsyncs data and metadata.
    pub(crate) fn sync_all(&self) -> std::io::Result<()> {
        self.write_out()?;
        fsio::sync(&self.file, &self.path, true)
    }

    /// Reads exactly `out.len()` bytes at `pos`, from the file and/or the buffer.
    pub(crate) fn read_exact_at(&self, out: &mut [u8], pos: u64) -> std::io::Result<()> {
        let p = self.lock();
        let end = pos + out.len() as u64;
        if end > p.file_len + p.buf.len() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the segment",
            ));
        }
        let from_file = p.file_len.saturating_sub(pos).min(out.len() as u64) as usize;
        if from_file > 0 {
            self.file.read_exact_at(&mut out[..from_file], pos)?;
        }
        if from_file < out.len() {
            let start = (pos + from_file as u64 - p.file_len) as usize;
            let n = out.len() - from_file;
            out[from_file..].copy_from_slice(&p.buf[start..start + n]);
        }
        Ok(())
    }

    /// `len` bytes at `pos`, from the file and/or the buffer, in a new buffer that is not zeroed
    /// first: fetches read megabytes at a time, and zeroing them cost about as much as the read.
    pub(crate) fn read_vec_at(&self, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let p = self.lock();
        let end = pos + len as u64;
        if end > p.file_len + p.buf.len() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the segment",
            ));
        }
        let from_file = p.file_len.saturating_sub(pos).min(len as u64) as usize;
        let mut out = Vec::with_capacity(len);
        // The file holds exactly `file_len` bytes (appended bytes past it are in `buf`), so
        // these reads stop at `from_file` however large the spare capacity is.
        while out.len() < from_file {
            let at = pos + out.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut out), at) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "segment file shorter than its recorded length",
                    ));
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.truncate(from_file);
        if from_file < len {
            let start = (pos + from_file as u64 - p.file_len) as usize;
            out.extend_from_slice(&p.buf[start..start + (len - from_file)]);
        }
        Ok(out)
    }

    /// Cuts the file to `len` bytes (writing buffered bytes first).
    pub(crate) fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut p = self.lock();
        self.write_locked(&mut p)?;
        fsio::set_len(&self.file, &self.path, len)?;
        p.file_len = len;
        Ok(())
    }

    /// Bytes appended, buffered or not.
    pub fn len(&self) -> u64 {
        let p = self.lock();
        p.file_len + p.buf.len() as u64
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file, for sequential recovery reads (the buffer is empty then).
    pub(crate) fn raw(&self) -> &File {
        &self.file
    }

    /// The file's path at open time.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_span_file_and_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = SegmentFile::new(
            File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
            path.clone(),
            0,
        );
        f.append(b"hello ").unwrap();
        f.write_out().unwrap();
        f.append(b"world").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"hello ",
            "the tail is still buffered"
        );
        let mut out = [0u8; 7];
        f.read_exact_at(&mut out, 3).unwrap();
        assert_eq!(&out, b"lo worl");
        assert!(f.read_exact_at(&mut out, 5).is_err());
        let big = vec![7u8; WRITE_BUFFER_BYTES + 1];
        f.append(&big).unwrap();
        assert_eq!(f.len(), 11 + big.len() as u64);
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            11 + big.len(),
            "large appends go straight through"
        );
        f.set_len(8).unwrap();
        f.append(b"!").unwrap();
        f.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello wo!");
    }
}
