//! Every file operation of the commit log that changes or persists data goes through here, so
//! that tests can inject failures and power cuts (`fault-injection` feature, see
//! [`crate::fault`]). Without the feature each function is the plain `std` call (and the
//! paths, there for the fault layer, go unused).
#![cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[cfg(feature = "fault-injection")]
use crate::fault::{FileOp, hook};

/// Writes all of `buf` at `pos` of `file` (whose name is `path`).
#[inline]
pub(crate) fn write_all_at(file: &File, path: &Path, buf: &[u8], pos: u64) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    hook::before_data_change(FileOp::Write, file, path)?;
    file.write_all_at(buf, pos)
}

/// Sets the length of `file`.
#[inline]
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    hook::before_data_change(FileOp::Truncate, file, path)?;
    file.set_len(len)
}

/// fsyncs the data of `file` (`fdatasync`), or data and metadata with `all`.
#[inline]
pub(crate) fn sync(file: &File, path: &Path, all: bool) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    let capture = hook::before_sync(file, path)?;
    if all {
        file.sync_all()?;
    } else {
        file.sync_data()?;
    }
    #[cfg(feature = "fault-injection")]
    hook::after_sync(capture);
    Ok(())
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
#[inline]
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    let capture = hook::before_sync_dir(dir)?;
    File::open(dir)?.sync_all()?;
    #[cfg(feature = "fault-injection")]
    hook::after_sync(capture);
    Ok(())
}

/// Renames a file.
#[inline]
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    return hook::rename(from, to);
    #[cfg(not(feature = "fault-injection"))]
    std::fs::rename(from, to)
}

/// Removes a file.
#[inline]
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    return hook::remove(path, |p| std::fs::remove_file(p));
    #[cfg(not(feature = "fault-injection"))]
    std::fs::remove_file(path)
}

/// Removes a directory and everything in it.
#[inline]
pub(crate) fn remove_dir_all(dir: &Path) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    return hook::remove(dir, |p| std::fs::remove_dir_all(p));
    #[cfg(not(feature = "fault-injection"))]
    std::fs::remove_dir_all(dir)
}
