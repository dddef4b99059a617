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
//!
//! Preallocation (`preallocate`): an fdatasync after appends that grew the file must also write
//! the inode (the new size and the newly allocated blocks), about half of its time on ext4. The
//! active segment's file is therefore kept written with zeros, and fsynced, up to
//! [`PREALLOCATE_AHEAD_BYTES`] past the data, by one process-wide background thread; appends then
//! overwrite blocks the file already has. It is only an optimisation: appends never wait for it
//! (a writer that outruns it simply grows the file), and zeros are only ever written past the
//! data, under the same lock as appends. The zeros are cut by [`SegmentFile::trim`] when the
//! segment stops being active, and by recovery after a crash (a zero header is not a batch).
//!
//! Reads that must not wait ([`without_waiting`]): a fetch of data just written is answered
//! from the page cache in microseconds, and handing it to a blocking thread costs more than the
//! read (two thread wake-ups). Inside `without_waiting` a read that would wait — for the disk
//! (`preadv2` with `RWF_NOWAIT` finds the pages not cached) or for this file's lock (held by a
//! write) — fails with [`std::io::ErrorKind::WouldBlock`] instead, and the caller reads again
//! where waiting is fine.

use std::cell::Cell;
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fsio;

/// Largest amount of appended data held in memory before it is written to the file.
pub const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// Zeros are written in chunks of this size (`rill perf fsync --zero-ahead`: 256 KiB and 1 MiB
/// chunks gave the same latency; 8 MiB ones held other fsyncs up behind them).
const PREALLOCATE_CHUNK_BYTES: u64 = 1 << 20;

/// How far past the data the zeros reach when the background thread has kept up.
pub const PREALLOCATE_AHEAD_BYTES: u64 = 2 * PREALLOCATE_CHUNK_BYTES;

thread_local! {
    /// While this thread runs [`without_waiting`]: the bytes its reads may still copy.
    static NO_WAIT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` with every segment read on this thread refusing to wait (see the module docs): a
/// read that would wait fails with `WouldBlock` (as [`crate::LogError::WouldBlock`] above this
/// module) and has no effect. So does a read that would copy more than is left of
/// `copy_budget`, which every read takes its bytes from (large copies belong on threads that
/// may block, too).
pub(crate) fn without_waiting<T>(copy_budget: &mut usize, f: impl FnOnce() -> T) -> T {
    struct Restore<'a>(Option<usize>, &'a mut usize);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            if let Some(left) = NO_WAIT.with(|n| n.replace(self.0)) {
                *self.1 = left;
            }
        }
    }
    let _restore = Restore(NO_WAIT.with(|n| n.replace(Some(*copy_budget))), copy_budget);
    f()
}

/// True inside [`without_waiting`].
pub(crate) fn refusing_to_wait() -> bool {
    NO_WAIT.with(Cell::get).is_some()
}

fn would_block() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::WouldBlock)
}

/// The `.log` file of a segment.
#[derive(Debug)]
pub struct SegmentFile {
    file: File,
    path: PathBuf,
    pending: Mutex<Pending>,
    /// Whether zeros are kept ahead of the data (see the module docs); turned off for good by
    /// [`SegmentFile::trim`] or a failed zero write.
    preallocate: AtomicBool,
    /// A request to the preallocation thread is queued and not yet served.
    preallocate_queued: AtomicBool,
    /// Zeros never reach past this (`segment.bytes`: the segment rolls before its data does).
    preallocate_limit: AtomicU64,
    /// The preallocation thread's own descriptor of the file, opened on first use. Its own, so
    /// that a write-back error its fsync consumes is still reported to the fsyncs that
    /// acknowledge appends (Linux reports such an error once per open file description).
    zero_file: Mutex<Option<File>>,
    /// Reads of this file cannot refuse to wait (its file system answers `RWF_NOWAIT` with
    /// EOPNOTSUPP, as tmpfs does, or the kernel lacks it): under [`without_waiting`] they fail
    /// at once, before any system call.
    nowait_unsupported: AtomicBool,
}

#[derive(Debug)]
struct Pending {
    /// Bytes appended but not yet written to the file; they start at `file_len`.
    buf: Vec<u8>,
    /// Bytes of data in the file itself.
    file_len: u64,
    /// Where the file ends: past `file_len` (and the buffer) when zeros were written ahead.
    zero_end: u64,
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
                zero_end: file_len,
            }),
            preallocate: AtomicBool::new(false),
            preallocate_queued: AtomicBool::new(false),
            preallocate_limit: AtomicU64::new(0),
            zero_file: Mutex::new(None),
            nowait_unsupported: AtomicBool::new(false),
        }
    }

    /// Starts (the active segment) or stops keeping zeros ahead of the data; the zeros follow
    /// appends, so an idle log writes none. Zeros already written stay until
    /// [`SegmentFile::trim`] or recovery.
    pub(crate) fn set_preallocation(&self, on: bool, limit: u64) {
        // Under the lock the zero writes take: once this returns off, none is in progress.
        let _p = self.lock();
        self.preallocate_limit.store(limit, Ordering::Release);
        self.preallocate.store(on, Ordering::Release);
    }

    /// Asks the preallocation thread for more zeros when they run short.
    fn request_preallocation(self: &Arc<Self>) {
        let short = self.zeros_short(&self.lock());
        self.request_if(short);
    }

    /// Queues a request to the preallocation thread when `short` and none is queued yet.
    fn request_if(self: &Arc<Self>, short: bool) {
        if short && !self.preallocate_queued.swap(true, Ordering::AcqRel) {
            preallocator::request(Arc::downgrade(self));
        }
    }

    /// True when preallocating and the zeros reach less than a chunk past the data (and not
    /// yet the limit).
    fn zeros_short(&self, p: &Pending) -> bool {
        if !self.preallocate.load(Ordering::Acquire) {
            return false;
        }
        let data_end = p.file_len + p.buf.len() as u64;
        p.zero_end.saturating_sub(data_end) < PREALLOCATE_CHUNK_BYTES
            && p.zero_end.max(data_end) < self.preallocate_limit.load(Ordering::Acquire)
    }

    /// Writes one chunk of zeros past the data and fsyncs it, unless the zeros already reach
    /// [`PREALLOCATE_AHEAD_BYTES`] ahead. Returns whether it wrote.
    fn preallocate_chunk(&self) -> std::io::Result<bool> {
        static ZEROS: [u8; PREALLOCATE_CHUNK_BYTES as usize] =
            [0; PREALLOCATE_CHUNK_BYTES as usize];
        if !self.preallocate.load(Ordering::Acquire) {
            return Ok(false);
        }
        // Only this thread uses it, so holding it across the fsync blocks nobody.
        let mut zero_file = self.zero_file.lock().unwrap_or_else(|p| p.into_inner());
        if zero_file.is_none() {
            use std::os::unix::fs::MetadataExt;
            let f = File::options().write(true).open(&self.path)?;
            let (ours, theirs) = (self.file.metadata()?, f.metadata()?);
            if (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()) {
                // Renamed or replaced since it was opened: the name is not this file any more.
                return Err(std::io::Error::other(
                    "the segment's file was renamed or replaced",
                ));
            }
            *zero_file = Some(f);
        }
        {
            let mut p = self.lock();
            // Checked under the lock that `trim` and `set_preallocation` take: no zeros after
            // either turned it off.
            if !self.preallocate.load(Ordering::Acquire) {
                // `trim` may have closed the descriptor before it was (re)opened above.
                zero_file.take();
                return Ok(false);
            }
            let Some(f) = zero_file.as_ref() else {
                return Ok(false);
            };
            let data_end = p.file_len + p.buf.len() as u64;
            let at = p.zero_end.max(data_end);
            let limit = self.preallocate_limit.load(Ordering::Acquire);
            if p.zero_end.saturating_sub(data_end) >= PREALLOCATE_AHEAD_BYTES || at >= limit {
                return Ok(false);
            }
            let len = PREALLOCATE_CHUNK_BYTES.min(limit - at) as usize;
            if let Err(e) = fsio::write_all_at(f, &self.path, &ZEROS[..len], at) {
                // Part of the chunk may be in the file: learn where it really ends, so that
                // `trim` cuts it.
                if let Ok(m) = self.file.metadata() {
                    p.zero_end = p.zero_end.max(m.len());
                }
                return Err(e);
            }
            p.zero_end = at + len as u64;
        }
        // Outside the lock: appends go on while the zeros reach the disk.
        if let Some(f) = zero_file.as_ref() {
            fsio::sync(f, &self.path, false)?;
        }
        Ok(true)
    }

    /// Stops preallocating and cuts the zeros past the data, durably (the segment is no longer
    /// active: a later segment must never follow zeros).
    pub(crate) fn trim(&self) -> std::io::Result<()> {
        self.preallocate.store(false, Ordering::Release);
        // The preallocation thread's descriptor is closed with it (waits for a chunk in flight).
        self.zero_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut p = self.lock();
        self.write_locked(&mut p)?;
        // The file's own length, not `zero_end` alone: nothing past the data may survive.
        let meta = self.file.metadata()?;
        if p.zero_end > p.file_len || meta.len() > p.file_len {
            fsio::set_len(&self.file, &self.path, p.file_len)?;
            p.zero_end = p.file_len;
            drop(p);
            // Cutting sets the modification time, which retention reads for segments without
            // timestamps: keep the time of the last append.
            if let Ok(modified) = meta.modified() {
                let _ = self.file.set_modified(modified);
            }
            fsio::sync(&self.file, &self.path, true)?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock for a read of `len` bytes: under [`without_waiting`] only if it is free and the
    /// copy fits what is left of the limit (which it then takes).
    fn lock_for_read(&self, len: usize) -> std::io::Result<MutexGuard<'_, Pending>> {
        let Some(budget) = NO_WAIT.with(Cell::get) else {
            return Ok(self.lock());
        };
        if len > budget {
            return Err(would_block());
        }
        let p = match self.pending.try_lock() {
            Ok(p) => p,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(would_block()),
        };
        NO_WAIT.with(|n| n.set(Some(budget - len)));
        Ok(p)
    }

    /// One read into `buf` at `at`; returns how many bytes it read (0 at the file's end). Under
    /// [`without_waiting`] a read that would wait for the disk fails with `WouldBlock`, and so
    /// does any other failure there (a read that waits reports the real error).
    fn pread_once(&self, buf: &mut [MaybeUninit<u8>], at: u64) -> std::io::Result<usize> {
        if !refusing_to_wait() {
            loop {
                match rustix::io::pread(&self.file, &mut *buf, at) {
                    Ok((init, _)) => return Ok(init.len()),
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if self.nowait_unsupported.load(Ordering::Relaxed) {
            return Err(would_block());
        }
        let Ok(offset) = libc::off_t::try_from(at) else {
            return Err(would_block());
        };
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        loop {
            // SAFETY: one iovec over `buf`, which the kernel only writes into (uninitialised
            // memory is fine for that); the descriptor is open for as long as `self` lives.
            let n =
                unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
            if n > 0 || (n == 0 && buf.is_empty()) {
                return Ok(n as usize);
            }
            if n == 0 {
                // The data is there (the caller checked the length): let a waiting read say.
                return Err(would_block());
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                // Not in the page cache.
                Some(libc::EAGAIN) => return Err(would_block()),
                Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM | libc::EINVAL) => {
                    // tmpfs, an old kernel, a seccomp filter: this file cannot be read without
                    // waiting; stop trying.
                    self.nowait_unsupported.store(true, Ordering::Relaxed);
                    return Err(would_block());
                }
                // Anything else (an I/O error, no memory): the waiting read reports it.
                _ => return Err(would_block()),
            }
        }
    }

    /// Fills `out` from the file at `pos` (all of it lies within the file's data).
    fn read_file_exact(&self, out: &mut [u8], pos: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            // SAFETY: viewing initialised bytes as `MaybeUninit` is always sound.
            let rest =
                unsafe { &mut *(std::ptr::from_mut(&mut out[done..]) as *mut [MaybeUninit<u8>]) };
            match self.pread_once(rest, pos + done as u64)? {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "segment file shorter than its recorded length",
                    ));
                }
                n => done += n,
            }
        }
        Ok(())
    }

    /// Appends `bytes` at the end (buffered when small).
    pub(crate) fn append(self: &Arc<Self>, bytes: &[u8]) -> std::io::Result<()> {
        let short = self.append_locked(bytes)?;
        self.request_if(short);
        Ok(())
    }

    /// Appends under the lock; returns whether the zeros ahead now run short (checked under
    /// the same lock, so an append takes it once).
    fn append_locked(&self, bytes: &[u8]) -> std::io::Result<bool> {
        let mut p = self.lock();
        if p.buf.len() + bytes.len() > WRITE_BUFFER_BYTES {
            self.write_locked(&mut p)?;
        }
        if bytes.len() >= WRITE_BUFFER_BYTES {
            fsio::write_all_at(&self.file, &self.path, bytes, p.file_len)?;
            p.file_len += bytes.len() as u64;
            p.zero_end = p.zero_end.max(p.file_len);
        } else {
            if p.buf.capacity() == 0 {
                p.buf.reserve_exact(WRITE_BUFFER_BYTES);
            }
            p.buf.extend_from_slice(bytes);
        }
        Ok(self.zeros_short(&p))
    }

    fn write_locked(&self, p: &mut Pending) -> std::io::Result<()> {
        if !p.buf.is_empty() {
            fsio::write_all_at(&self.file, &self.path, &p.buf, p.file_len)?;
            p.file_len += p.buf.len() as u64;
            p.zero_end = p.zero_end.max(p.file_len);
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
        let p = self.lock_for_read(out.len())?;
        let end = pos + out.len() as u64;
        if end > p.file_len + p.buf.len() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the segment",
            ));
        }
        let from_file = p.file_len.saturating_sub(pos).min(out.len() as u64) as usize;
        if from_file > 0 {
            self.read_file_exact(&mut out[..from_file], pos)?;
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
        let p = self.lock_for_read(len)?;
        let end = pos + len as u64;
        if end > p.file_len + p.buf.len() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the segment",
            ));
        }
        let from_file = p.file_len.saturating_sub(pos).min(len as u64) as usize;
        let mut out = Vec::with_capacity(len);
        // Reads stop at `from_file`: past it the file has preallocated zeros, or nothing.
        while out.len() < from_file {
            let at = pos + out.len() as u64;
            let want = from_file - out.len();
            let spare = &mut out.spare_capacity_mut()[..want];
            match self.pread_once(spare, at)? {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "segment file shorter than its recorded length",
                    ));
                }
                // SAFETY: the read initialised the first `n` bytes of the spare capacity.
                n => unsafe { out.set_len(out.len() + n) },
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
        p.zero_end = len;
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

/// The one thread that writes zeros ahead of every active segment with `preallocate` on. One
/// is enough: a chunk costs a page-cache copy and an fsync off the append path, and a writer
/// that outruns it loses nothing but the optimisation.
mod preallocator {
    use std::sync::mpsc::{Sender, channel};
    use std::sync::{Mutex, OnceLock, Weak};

    use super::SegmentFile;

    /// The queue of files whose zeros run short (weak: a closed segment is simply skipped).
    static QUEUE: OnceLock<Mutex<Sender<Weak<SegmentFile>>>> = OnceLock::new();

    pub(super) fn request(file: Weak<SegmentFile>) {
        let queue = QUEUE.get_or_init(|| {
            let (tx, rx) = channel::<Weak<SegmentFile>>();
            let spawned = std::thread::Builder::new()
                .name("rill-preallocate".into())
                .spawn(move || {
                    while let Ok(file) = rx.recv() {
                        if let Some(file) = file.upgrade() {
                            serve(&file);
                        }
                        // (`file` dropped here, before waiting: a dropped segment is freed.)
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the preallocation thread; appends grow their files");
            }
            Mutex::new(tx)
        });
        let sent = queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(file.clone());
        if sent.is_err()
            && let Some(file) = file.upgrade()
        {
            // No thread: never ask again for this file.
            file.preallocate
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// Writes up to [`PREALLOCATE_AHEAD_BYTES`] of zeros for one file, then lets the others
    /// have their turn (a file written faster than zeros are would otherwise keep the thread).
    fn serve(file: &std::sync::Arc<SegmentFile>) {
        use std::sync::atomic::Ordering;
        for _ in 0..super::PREALLOCATE_AHEAD_BYTES / super::PREALLOCATE_CHUNK_BYTES {
            match file.preallocate_chunk() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    // A full disk, say: the appends themselves will tell. Zeros already written
                    // past the data are harmless and cut at roll, close or recovery.
                    tracing::warn!(segment = %file.path.display(), error = %e,
                        "writing zeros ahead of the segment failed; it grows as it is appended to");
                    file.preallocate.store(false, Ordering::Release);
                }
            }
            break;
        }
        file.preallocate_queued.store(false, Ordering::Release);
        // Still short (it was outrun, or an append found it short while this request was being
        // served and did not queue another): to the back of the queue.
        file.request_preallocation();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_file(path: &Path) -> Arc<SegmentFile> {
        Arc::new(SegmentFile::new(
            File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
            path.to_owned(),
            0,
        ))
    }

    /// "hello " in the file, "world" still in the write buffer.
    fn hello_world(path: &Path) -> Arc<SegmentFile> {
        let f = new_file(path);
        f.append(b"hello ").unwrap();
        f.write_out().unwrap();
        f.append(b"world").unwrap();
        f
    }

    #[test]
    fn reads_that_must_not_wait_refuse_a_held_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = hello_world(&path);
        assert_eq!(
            without_waiting(&mut { usize::MAX }, || f.read_vec_at(6, 5)).unwrap(),
            b"world",
            "buffered bytes are read without waiting"
        );
        let held = f.lock();
        let refused = without_waiting(&mut { usize::MAX }, || f.read_vec_at(6, 5)).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::WouldBlock);
        let mut out = [0u8; 5];
        let refused =
            without_waiting(&mut { usize::MAX }, || f.read_exact_at(&mut out, 0)).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::WouldBlock);
        drop(held);
        f.read_exact_at(&mut out, 6).unwrap();
        assert_eq!(
            &out, b"world",
            "outside without_waiting reads wait as before"
        );
        assert!(!refusing_to_wait(), "the flag is restored");
        let mut budget = 8;
        let refused = without_waiting(&mut budget, || f.read_vec_at(0, 11)).unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::WouldBlock,
            "over the budget"
        );
        assert_eq!(
            without_waiting(&mut budget, || f.read_vec_at(6, 5)).unwrap(),
            b"world"
        );
        assert_eq!(budget, 3, "the copy is taken from the budget");
    }

    #[test]
    fn reads_span_file_and_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = hello_world(&path);
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
