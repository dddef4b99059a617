//! `cargo xtask image`: container images of the release binaries, built with no registry.
//!
//! Each image is `FROM scratch` plus one layer, `rootfs.tar`, which this module writes: the
//! binary (and `rill-healthcheck` for the servers), the shared libraries `ldd` lists for them
//! (copied from this machine, at the paths `ldd` names), `/etc/passwd` and `/etc/group` with the
//! user `rill` (uid and gid 10001), an empty `/tmp` (1777) and `/var/lib/rill` owned by `rill`
//! (the data volume). The Dockerfiles in `deploy/images/` add the user, environment defaults,
//! volume, ports, health check and entrypoint; `docker build` gets a context directory under
//! `target/image/` holding only the Dockerfile and `rootfs.tar`, so nothing is pulled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cluster::root;

/// The numeric user and group the images run as (`rill`).
pub const UID: u32 = 10001;

/// One image: its name (also the Dockerfile's name in `deploy/images/`) and the release
/// binaries it carries.
pub struct Image {
    pub name: &'static str,
    pub binaries: &'static [&'static str],
}

pub const IMAGES: [Image; 3] = [
    Image {
        name: "rill-controller",
        binaries: &["rill-controller", "rill-healthcheck"],
    },
    Image {
        name: "rill-broker",
        binaries: &["rill-broker", "rill-healthcheck"],
    },
    Image {
        name: "rill",
        binaries: &["rill"],
    },
];

/// The tag every image gets besides `latest`: the workspace version.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Which cargo profile's binaries go into the images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `target/release`: the images to deploy, tagged with the version and `latest`.
    Release,
    /// `target/debug`: images for `rill-chaos`'s docker fault scenarios only, tagged
    /// `test-<hash>` (see [`test_tag`]); never `latest`.
    Dev,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// How the images are tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tagging {
    /// The version and `latest` (what compose and the Kubernetes manifests run).
    Deploy,
    /// `test-<hash of the binaries' directory>`, which `rill_chaos::docker::test_images` looks
    /// for: each checkout and profile has its own, so concurrent test runs on one Docker daemon
    /// do not overwrite each other's images.
    Test,
}

/// The label holding the binaries an image was built from (`name:size:mtime-ns,...`); the
/// docker tests compare it with the binaries they were built with.
pub const BINARIES_LABEL: &str = "org.rill.binaries";

/// The tag [`Tagging::Test`] gives the images of the binaries in `bin_dir`: `test-` and the
/// FNV-1a hash of the directory's canonical path (the same function as
/// `rill_chaos::docker::test_image_tag`).
pub fn test_tag(bin_dir: &Path) -> String {
    let dir = bin_dir
        .canonicalize()
        .unwrap_or_else(|_| bin_dir.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_string_lossy().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("test-{hash:016x}")
}

/// `name:size:mtime-ns` of each binary, joined by commas (as
/// `rill_chaos::docker::binaries_fingerprint`).
fn fingerprint(binaries: &[PathBuf]) -> Result<String> {
    let mut parts = Vec::new();
    for b in binaries {
        let meta = std::fs::metadata(b).with_context(|| format!("{} is missing", b.display()))?;
        let mtime = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = b.file_name().context("binary name")?.to_string_lossy();
        parts.push(format!("{name}:{}:{mtime}", meta.len()));
    }
    Ok(parts.join(","))
}

/// Builds the release binaries (unless `build` is false), then every image, tagged for
/// deployment.
pub fn build_all(build: bool) -> Result<()> {
    build_images(Profile::Release, Tagging::Deploy, build)
}

/// Builds the binaries of `profile` (unless `cargo_build` is false), then the images: all three
/// for [`Tagging::Deploy`], the two servers for [`Tagging::Test`]. A test image already built
/// from the same binaries is kept as it is.
pub fn build_images(profile: Profile, tagging: Tagging, cargo_build: bool) -> Result<()> {
    if cargo_build {
        let mut args = vec!["build"];
        if profile == Profile::Release {
            args.push("--release");
        }
        args.extend([
            "-p",
            "rill-controller",
            "-p",
            "rill-broker",
            "-p",
            "rill-cli",
            "-p",
            "rill-healthcheck",
        ]);
        crate::run("cargo", &args)?;
    }
    require_docker()?;
    let bin_dir = root().join("target").join(profile.dir());
    let tags = match tagging {
        Tagging::Deploy => vec![version().to_owned(), "latest".to_owned()],
        Tagging::Test => vec![test_tag(&bin_dir)],
    };
    let images: Vec<&Image> = match tagging {
        Tagging::Deploy => IMAGES.iter().collect(),
        Tagging::Test => IMAGES.iter().filter(|i| i.name != "rill").collect(),
    };
    let mut built = Vec::new();
    for image in images {
        built.push((image.name, build_image(image, &bin_dir, &tags)?));
    }
    println!("images (docker images):");
    for (name, size) in built {
        println!("  {name}:{}  {:.1} MB", tags.join(", :"), size as f64 / 1e6);
    }
    Ok(())
}

/// Fails with a clear message when the docker CLI or daemon is not there.
pub fn require_docker() -> Result<()> {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "docker is not available (`docker version` failed): install Docker Engine and start its daemon"
        );
    }
    Ok(())
}

/// Whether `name:tag` exists in the local image store.
pub fn exists(name: &str, tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", &format!("{name}:{tag}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Writes the build context of `image` from the binaries in `bin_dir` and runs `docker build`
/// with `tags` (the first names the context directory unless it is the version); returns the
/// image size in bytes. An image whose label says it holds these very binaries is not built
/// again.
fn build_image(image: &Image, bin_dir: &Path, tags: &[String]) -> Result<u64> {
    let first = tags.first().context("no tag given")?;
    let base = if first == version() {
        root().join("target/image")
    } else {
        root().join("target/image").join(first)
    };
    let context = base.join(image.name);
    let binaries: Vec<PathBuf> = image.binaries.iter().map(|b| bin_dir.join(b)).collect();
    for b in &binaries {
        if !b.is_file() {
            bail!(
                "{} is missing: build the binaries first (`cargo xtask image` without --no-build does)",
                b.display()
            );
        }
    }
    let fingerprint = fingerprint(&binaries)?;
    let reference = format!("{}:{first}", image.name);
    let current = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{BINARIES_LABEL}\"}}}}"),
            &reference,
        ])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == fingerprint
        });
    let test_image = first != version();
    if current && test_image {
        println!("{reference} is up to date (built from these binaries)");
        return image_size(&reference);
    }
    let previous = image_id(&reference);
    std::fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let dockerfile = root()
        .join("deploy/images")
        .join(format!("{}.Dockerfile", image.name));
    std::fs::copy(&dockerfile, context.join("Dockerfile"))
        .with_context(|| format!("copying {}", dockerfile.display()))?;
    // Debug info (line tables) is most of a release binary; the symbols stay, so a panic's
    // backtrace still names functions.
    // (Outside the build context, which holds only what the Dockerfile adds.)
    let stripped_dir = base.join("stripped").join(image.name);
    std::fs::create_dir_all(&stripped_dir)?;
    let mut stripped = Vec::new();
    for b in &binaries {
        let out = stripped_dir.join(b.file_name().context("binary name")?);
        let ok = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(b)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            stripped.push(out);
        } else {
            println!(
                "note: `strip --strip-debug` failed (binutils missing?); {} goes in with its debug info",
                b.display()
            );
            stripped.push(b.clone());
        }
    }
    let entries = rootfs_entries(&stripped)?;
    let tar = context.join("rootfs.tar");
    write_tar(&tar, &entries)?;
    let mut args: Vec<String> = vec!["build".into()];
    for tag in tags {
        args.extend(["--tag".into(), format!("{}:{tag}", image.name)]);
    }
    args.extend([
        "--build-arg".into(),
        format!("VERSION={}", version()),
        "--label".into(),
        format!("{BINARIES_LABEL}={fingerprint}"),
        context.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::run("docker", &args)?;
    // A test image replaced by a newer build is of no use any more: remove it rather than leave
    // it dangling (this fails harmlessly while a container still uses it).
    if test_image
        && let Some(old) = previous
        && image_id(&reference).is_some_and(|new| new != old)
    {
        let _ = Command::new("docker").args(["image", "rm", &old]).output();
    }
    image_size(&reference)
}

/// The id of an image, if it exists.
fn image_id(reference: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}

/// The size of an image in bytes, as `docker images` counts it.
fn image_size(reference: &str) -> Result<u64> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", reference])
        .output()
        .context("docker image inspect")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the size of {reference}"))
}

/// One entry of the root filesystem layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the image, relative (no leading `/`).
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// Contents read from this host file (symlinks followed).
    HostFile(PathBuf),
    /// Literal contents.
    Text(String),
}

/// The layer's entries: parent directories first, then files.
fn rootfs_entries(binaries: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut files: Vec<(String, EntryKind, u32)> = Vec::new();
    for b in binaries {
        let name = b.file_name().context("binary name")?.to_string_lossy();
        files.push((
            format!("usr/local/bin/{name}"),
            EntryKind::HostFile(b.clone()),
            0o755,
        ));
    }
    let mut libs = Vec::new();
    for b in binaries {
        for lib in shared_libraries(b)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in libs {
        let path = lib
            .to_str()
            .and_then(|p| p.strip_prefix('/'))
            .with_context(|| format!("library path {}", lib.display()))?
            .to_owned();
        files.push((path, EntryKind::HostFile(lib), 0o755));
    }
    let text = |s: &str| EntryKind::Text(s.to_owned());
    files.push((
        "etc/passwd".into(),
        text(&format!(
            "root:x:0:0:root:/:/nonexistent\nrill:x:{UID}:{UID}:rill:/var/lib/rill:/nonexistent\n"
        )),
        0o644,
    ));
    files.push((
        "etc/group".into(),
        text(&format!("root:x:0:\nrill:x:{UID}:\n")),
        0o644,
    ));
    // glibc's resolver: /etc/hosts first, then DNS (what a container's resolv.conf names).
    files.push((
        "etc/nsswitch.conf".into(),
        text("hosts: files dns\n"),
        0o644,
    ));
    let mut entries = Vec::new();
    fn dir(path: &str, mode: u32, uid: u32, entries: &mut Vec<Entry>) {
        if !entries.iter().any(|e| e.path == path) {
            entries.push(Entry {
                path: path.to_owned(),
                kind: EntryKind::Dir,
                mode,
                uid,
            });
        }
    }
    dir("tmp", 0o1777, 0, &mut entries);
    dir("var", 0o755, 0, &mut entries);
    dir("var/lib", 0o755, 0, &mut entries);
    dir("var/lib/rill", 0o750, UID, &mut entries);
    for (path, kind, mode) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for n in 1..parts.len() {
            dir(&parts[..n].join("/"), 0o755, 0, &mut entries);
        }
        entries.push(Entry {
            path,
            kind,
            mode,
            uid: 0,
        });
    }
    Ok(entries)
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this machine (the dynamic
/// loader included; the vDSO, which has no file, left out).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian: libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} is not found", name.trim());
                }
                rest.split(" (").next().unwrap_or_default().trim()
            }
            None => line.split(" (").next().unwrap_or_default().trim(),
        };
        if target.starts_with('/') {
            libs.push(PathBuf::from(target));
        }
    }
    Ok(libs)
}

/// Writes `entries` as a POSIX ustar archive (what `ADD` unpacks with owners and modes kept).
fn write_tar(path: &Path, entries: &[Entry]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for e in entries {
        let data = match &e.kind {
            EntryKind::Dir => Vec::new(),
            EntryKind::HostFile(p) => {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
            }
            EntryKind::Text(t) => t.as_bytes().to_vec(),
        };
        out.write_all(&tar_header(e, data.len() as u64)?)?;
        out.write_all(&data)?;
        let pad = (512 - data.len() % 512) % 512;
        out.write_all(&vec![0; pad])?;
    }
    // Two zero blocks end the archive.
    out.write_all(&[0; 1024])?;
    out.flush()?;
    Ok(())
}

fn tar_header(e: &Entry, size: u64) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let is_dir = e.kind == EntryKind::Dir;
    let name = if is_dir {
        format!("{}/", e.path)
    } else {
        e.path.clone()
    };
    let (prefix, name) = if name.len() <= 100 {
        (String::new(), name)
    } else {
        // ustar splits long names at a `/`: up to 155 bytes of prefix, 100 of name.
        let cut = name[..name.len().min(155)]
            .rfind('/')
            .filter(|c| name.len() - c - 1 <= 100)
            .with_context(|| format!("path too long for ustar: {name}"))?;
        (name[..cut].to_owned(), name[cut + 1..].to_owned())
    };
    let put = |h: &mut [u8; 512], at: usize, len: usize, bytes: &[u8]| {
        h[at..at + bytes.len().min(len)].copy_from_slice(&bytes[..bytes.len().min(len)]);
    };
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}\0", width = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    put(&mut h, 0, 100, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(e.mode));
    octal(&mut h, 108, 8, u64::from(e.uid));
    octal(&mut h, 116, 8, u64::from(e.uid));
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0); // mtime: fixed, so the layer depends on the contents only
    h[156] = if is_dir { b'5' } else { b'0' };
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    put(&mut h, 345, 155, prefix.as_bytes());
    // The checksum is computed with its own field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_files() -> Result<()> {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text)?,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        Ok(())
    }

    /// The archive unpacks with GNU tar to the owners, modes and contents given.
    #[test]
    fn the_layer_is_a_tar_that_keeps_owners_and_modes() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let host = dir.join("host-file");
        std::fs::write(&host, b"binary")?;
        let long = format!("{}/file", "d".repeat(120));
        let entries = vec![
            Entry {
                path: "tmp".into(),
                kind: EntryKind::Dir,
                mode: 0o1777,
                uid: 0,
            },
            Entry {
                path: "data".into(),
                kind: EntryKind::Dir,
                mode: 0o750,
                uid: UID,
            },
            Entry {
                path: "bin-file".into(),
                kind: EntryKind::HostFile(host),
                mode: 0o755,
                uid: 0,
            },
            Entry {
                path: long.clone(),
                kind: EntryKind::Text("x".repeat(700)),
                mode: 0o644,
                uid: 0,
            },
        ];
        let tar = dir.join("t.tar");
        write_tar(&tar, &entries)?;
        let out = Command::new("tar")
            .args(["--list", "--verbose", "--numeric-owner", "--file"])
            .arg(&tar)
            .output()?;
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        std::fs::remove_dir_all(&dir)?;
        assert!(out.status.success(), "{listing}");
        // mode, owner, size, date, time, name
        let fields: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let summary: Vec<(&str, &str, &str, &str)> =
            fields.iter().map(|f| (f[0], f[1], f[2], f[5])).collect();
        assert_eq!(
            summary,
            vec![
                ("drwxrwxrwt", "0/0", "0", "tmp/"),
                ("drwxr-x---", "10001/10001", "0", "data/"),
                ("-rwxr-xr-x", "0/0", "6", "bin-file"),
                ("-rw-r--r--", "0/0", "700", long.as_str()),
            ],
            "{listing}"
        );
        Ok(())
    }

    #[test]
    fn parent_directories_come_before_files() -> Result<()> {
        let entries = rootfs_entries(&[])?;
        let pos = |p: &str| entries.iter().position(|e| e.path == p).unwrap();
        assert!(pos("etc") < pos("etc/passwd"));
        let rill = &entries[pos("var/lib/rill")];
        assert_eq!((rill.uid, rill.kind.clone()), (UID, EntryKind::Dir));
        assert_eq!(entries[pos("tmp")].mode, 0o1777);
        Ok(())
    }
}
