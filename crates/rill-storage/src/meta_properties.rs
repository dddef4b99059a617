//! Each log dir's `meta.properties` (Kafka's file name and format): which node and which
//! cluster the data in the dir belongs to. A broker started on another node's dirs, or on a
//! dir of another cluster, would serve that data as its own replicas — offsets, epochs and
//! high watermarks of a different history — and could lose acknowledged records; it refuses
//! to start instead, as Kafka's `MetaPropertiesEnsemble` verification does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError, Result};

/// The file in every log dir.
pub const META_PROPERTIES: &str = "meta.properties";

/// The only format version written and read (Kafka's KRaft `version=1`).
const VERSION: &str = "1";

/// What a log dir's `meta.properties` says. Keys rill does not know (Kafka's `directory.id`,
/// say) are kept when the file is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    /// The `node.id` of the broker the dir belongs to.
    pub node_id: i32,
    /// The cluster the dir belongs to; `None` until the broker first learned it.
    pub cluster_id: Option<String>,
    other: BTreeMap<String, String>,
}

impl MetaProperties {
    /// A new dir's properties: this node's, cluster still unknown.
    pub fn new(node_id: i32) -> Self {
        MetaProperties {
            node_id,
            cluster_id: None,
            other: BTreeMap::new(),
        }
    }

    /// Reads `dir`'s file; `None` when the dir has none yet (a new dir, or one written by a
    /// rill that did not keep the file).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(META_PROPERTIES);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|reason| LogError::Corrupt { path, reason })
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut props = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            props.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        match props.remove("version").as_deref() {
            Some(VERSION) => {}
            Some(v) => return Err(format!("version {v} is not supported (only {VERSION})")),
            None => return Err("no version".into()),
        }
        let node_id = props
            .remove("node.id")
            .ok_or("no node.id")?
            .parse()
            .map_err(|e| format!("node.id: {e}"))?;
        let cluster_id = props.remove("cluster.id").filter(|c| !c.is_empty());
        Ok(MetaProperties {
            node_id,
            cluster_id,
            other: props,
        })
    }

    /// Writes the file into `dir` (atomically: a crash leaves the old or the new one).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut text = String::from(
            "# Written by rill: the node and cluster this log dir belongs to. A broker with\n\
             # another node.id, or of another cluster, refuses to start on this dir.\n",
        );
        text.push_str(&format!("version={VERSION}\nnode.id={}\n", self.node_id));
        if let Some(c) = &self.cluster_id {
            text.push_str(&format!("cluster.id={c}\n"));
        }
        for (k, v) in &self.other {
            text.push_str(&format!("{k}={v}\n"));
        }
        crate::checkpoint::write_atomically(&dir.join(META_PROPERTIES), text.as_bytes())
    }
}

/// The error for a dir that belongs to someone else.
pub(crate) fn foreign(dir: &Path, reason: String) -> LogError {
    LogError::ForeignLogDir {
        dir: PathBuf::from(dir),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MetaProperties::read(dir.path()).unwrap(), None);
        let kafka = "#\n#Thu Nov 26 10:00:00 UTC 2026\nnode.id=3\ndirectory.id=abc\nversion=1\ncluster.id=Qx7\n";
        std::fs::write(dir.path().join(META_PROPERTIES), kafka).unwrap();
        let mut m = MetaProperties::read(dir.path()).unwrap().unwrap();
        assert_eq!((m.node_id, m.cluster_id.as_deref()), (3, Some("Qx7")));
        m.cluster_id = Some("other".into());
        m.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(META_PROPERTIES)).unwrap();
        assert!(text.contains("directory.id=abc\n"), "{text}");
        let back = MetaProperties::read(dir.path()).unwrap().unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        for bad in [
            "node.id=1\n",
            "version=0\nnode.id=1\n",
            "version=1\n",
            "version=1\nnode.id=x\n",
            "version=1\nnode.id\n",
        ] {
            assert!(MetaProperties::parse(bad).is_err(), "{bad:?}");
        }
    }
}
