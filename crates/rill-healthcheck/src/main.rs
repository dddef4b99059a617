//! `rill-healthcheck [HOST:PORT] [--path PATH] [--timeout-ms N]`: one plain HTTP/1.0 `GET` of a
//! broker's or controller's `/health` (served on `metrics.address`); exits 0 when the answer is
//! `200`, 1 otherwise, with one line on stderr saying why.
//!
//! The rill images are `FROM scratch` (no shell, no curl), so their `HEALTHCHECK` runs this
//! binary in exec form. Without an address it probes the port of `RILL_METRICS_ADDRESS` (the
//! variable the images set) on the loopback address when that address is unspecified
//! (`0.0.0.0`, `[::]`). The standard library only: nothing to update but the compiler.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What to probe, from the command line and the environment.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    /// `host:port` of the HTTP endpoint.
    address: String,
    /// Request path, starting with `/`.
    path: String,
    /// Limit for connecting, sending and reading together.
    timeout: Duration,
}

const USAGE: &str = "usage: rill-healthcheck [HOST:PORT] [--path /health] [--timeout-ms 2000]\n\
without HOST:PORT, the port of RILL_METRICS_ADDRESS on 127.0.0.1 is probed";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let metrics = std::env::var("RILL_METRICS_ADDRESS").ok();
    let probe = match parse_args(&args, metrics.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rill-healthcheck: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match check(&probe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "rill-healthcheck: http://{}{}: {e}",
                probe.address, probe.path
            );
            ExitCode::FAILURE
        }
    }
}

/// Reads the arguments; `metrics_env` is `RILL_METRICS_ADDRESS`, the fallback address.
fn parse_args(args: &[String], metrics_env: Option<&str>) -> Result<Probe, String> {
    let mut address = None;
    let mut path = "/health".to_owned();
    let mut timeout = Duration::from_millis(2000);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err("help requested".into()),
            "--path" => {
                let p = it.next().ok_or("--path needs a value")?;
                if !p.starts_with('/') {
                    return Err(format!("--path {p:?} must start with /"));
                }
                path = p.clone();
            }
            "--timeout-ms" => {
                let v = it.next().ok_or("--timeout-ms needs a value")?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| format!("--timeout-ms {v:?} is not a positive integer"))?;
                timeout = Duration::from_millis(ms);
            }
            a if a.starts_with('-') => return Err(format!("unknown option {a:?}")),
            a if address.is_none() => address = Some(a.to_owned()),
            a => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let address = match address {
        Some(a) => a,
        None => match metrics_env.map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => local_address(m)?,
            None => return Err("no address given and RILL_METRICS_ADDRESS is not set".into()),
        },
    };
    Ok(Probe {
        address,
        path,
        timeout,
    })
}

/// The address to probe a server listening on `listen` from the same host: an unspecified IP
/// (`0.0.0.0`, `[::]`) becomes the loopback address of its family; anything else stays.
fn local_address(listen: &str) -> Result<String, String> {
    match listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() && a.is_ipv4() => Ok(format!("127.0.0.1:{}", a.port())),
        Ok(a) if a.ip().is_unspecified() => Ok(format!("[::1]:{}", a.port())),
        Ok(a) => Ok(a.to_string()),
        Err(_) => Err(format!(
            "RILL_METRICS_ADDRESS {listen:?} is not host:port with a numeric IP"
        )),
    }
}

/// One `GET`; `Ok` when the status is 200.
fn check(probe: &Probe) -> Result<(), String> {
    let deadline = Instant::now() + probe.timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms", probe.timeout.as_millis()))
    };
    let addrs: Vec<SocketAddr> = probe
        .address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last_error = "resolved to no address".to_owned();
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let host = probe.address.as_str();
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: rill-healthcheck\r\nConnection: close\r\n\r\n",
        probe.path
    );
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("sending the request: {e}"))?;
    // The status line is all that matters; read until it is complete (or the server closes).
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 8192 {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let status = status_code(&head)?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// The status code of an HTTP/1.x status line at the start of `head`.
fn status_code(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP answer: {:?}", line.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Serves one connection with `answer` and returns its address and the request it read.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, handle)
    }

    fn probe(address: String) -> Probe {
        Probe {
            address,
            path: "/health".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_address_comes_from_the_argument_or_the_metrics_address() {
        let p = parse_args(&args(&["10.0.0.5:9094"]), Some("0.0.0.0:1")).unwrap();
        assert_eq!(p.address, "10.0.0.5:9094");
        assert_eq!(p.path, "/health");
        let p = parse_args(&[], Some("0.0.0.0:9094")).unwrap();
        assert_eq!(p.address, "127.0.0.1:9094");
        let p = parse_args(&[], Some("[::]:9095")).unwrap();
        assert_eq!(p.address, "[::1]:9095");
        let p = parse_args(&[], Some("192.168.1.2:9095")).unwrap();
        assert_eq!(p.address, "192.168.1.2:9095");
        let p = parse_args(
            &args(&["--path", "/metrics", "--timeout-ms", "50", "h:1"]),
            None,
        )
        .unwrap();
        assert_eq!(
            p,
            Probe {
                address: "h:1".into(),
                path: "/metrics".into(),
                timeout: Duration::from_millis(50)
            }
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse_args(&[], None).is_err());
        assert!(parse_args(&[], Some("")).is_err());
        assert!(parse_args(&[], Some("broker:9094")).is_err());
        assert!(parse_args(&args(&["--path", "health", "h:1"]), None).is_err());
        assert!(parse_args(&args(&["--timeout-ms", "0", "h:1"]), None).is_err());
        assert!(parse_args(&args(&["h:1", "h:2"]), None).is_err());
        assert!(parse_args(&args(&["--bogus", "h:1"]), None).is_err());
    }

    #[test]
    fn status_200_is_healthy_and_anything_else_is_not() {
        let (addr, server) = serve_once("HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nready\n");
        assert_eq!(check(&probe(addr.clone())), Ok(()));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /health HTTP/1.0\r\n"), "{request}");
        assert!(request.contains(&format!("Host: {addr}\r\n")), "{request}");

        let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nfenced\n");
        assert_eq!(check(&probe(addr)), Err("status 503".into()));
        server.join().unwrap();

        let (addr, server) = serve_once("SSH-2.0-OpenSSH\r\n");
        assert!(
            check(&probe(addr))
                .unwrap_err()
                .contains("not an HTTP answer")
        );
        server.join().unwrap();
    }

    #[test]
    fn nobody_listening_is_unhealthy() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let err = check(&probe(addr)).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let p = Probe {
            timeout: Duration::from_millis(200),
            ..probe(addr)
        };
        let started = Instant::now();
        let err = check(&p).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{err}");
        drop(listener);
    }
}
