//! Support shared by the tests that start real controllers and brokers.
//!
//! Those tests give each process a port on 127.0.0.1 before starting it. Asking the kernel for
//! port 0 and closing it again (the usual trick) hands out a port from the *ephemeral* range,
//! which any outbound connection on the machine (a client, kcat, another test's cluster) may
//! take in the time before the broker binds it: the broker then exits with "address in use" and
//! the test fails for no fault of rill's. [`free_port`] instead hands out ports *below* the
//! ephemeral range, which the kernel never picks for outbound connections, and reserves each one
//! with a lock file held until the test process exits, so two tests running side by side (each
//! nextest test is its own process) never get the same port.

use std::fs::{File, OpenOptions, TryLockError};
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the registered services most machines run.
const FIRST_PORT: u16 = 10_000;

/// Lock files of the ports this process holds; dropped (unlocked) when the process exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Where the next search starts, spread per process so parallel tests rarely even try the same
/// port.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port on 127.0.0.1 that nothing listens on, that the kernel will not give to an outbound
/// connection, and that no other test process will be given while this one runs.
///
/// Panics when no port can be found (every test here needs one; there is nothing to go on with).
pub fn free_port() -> u16 {
    let (first, end) = port_range();
    let span = u32::from(end - first);
    let dir = lock_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!(
            "cannot create the port lock directory {}: {e}",
            dir.display()
        );
    }
    let start = {
        let seed = (RandomState::new().hash_one(std::process::id()) % u64::from(span)) as u32;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
    for i in 0..span {
        let port = first + ((start.wrapping_add(i)) % span) as u16;
        let path = dir.join(port.to_string());
        let file = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) => panic!("cannot open the port lock file {}: {e}", path.display()),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => panic!("cannot lock {}: {e}", path.display()),
        }
        // Something outside the tests may listen here (or a socket of a test that has just
        // ended may linger): only a port this process can bind itself is handed out.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        NEXT.store(start.wrapping_add(i + 1), Ordering::Relaxed);
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
        return port;
    }
    panic!("no free port between {first} and {end} on 127.0.0.1");
}

/// Ports from [`FIRST_PORT`] up to (not including) the start of the kernel's ephemeral range.
fn port_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_start > FIRST_PORT + 1_000,
        "the ephemeral port range starts at {ephemeral_start}; the tests need ports {FIRST_PORT} \
         and up outside it (sysctl net.ipv4.ip_local_port_range)"
    );
    (FIRST_PORT, ephemeral_start)
}

/// Shared by every test process of every checkout on the machine, so two test runs side by
/// side do not collide either.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("rill-test-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_outside_the_ephemeral_range_and_bindable() {
        let (first, end) = port_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!((first..end).contains(&p), "{p} outside {first}..{end}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn a_port_held_by_another_process_is_not_handed_out() {
        // flock locks belong to the open file description, so a second open of the same lock
        // file (as another test process would do) finds it locked.
        let taken = free_port();
        let path = lock_dir().join(taken.to_string());
        let other = OpenOptions::new().append(true).open(&path).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }
}
