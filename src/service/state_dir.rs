//! The state directory: learned counts saved so that a model keeps what it learned across
//! runs. Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash
//! leaves either the old file or the new one, never half of one.

use crate::engine::markov::LearnedCounts;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LEARNED_FILE: &str = "learned.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct LearnedFile {
    pub version: u32,
    pub flows: BTreeMap<String, LearnedCounts>,
}

pub fn learned_path(dir: &Path) -> PathBuf {
    dir.join(LEARNED_FILE)
}

/// Reads the learned counts, or `None` when the directory has none yet.
pub fn load_learned(dir: &Path) -> anyhow::Result<Option<BTreeMap<String, LearnedCounts>>> {
    let path = learned_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: LearnedFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a flowcast state file", path.display()))?;
    if file.version != FORMAT_VERSION {
        anyhow::bail!(
            "{}: state format version {} is not supported (expected {FORMAT_VERSION})",
            path.display(),
            file.version
        );
    }
    for (name, learned) in &file.flows {
        crate::engine::snapshot::validate_learned(name, learned)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(Some(file.flows))
}

pub fn save_learned(dir: &Path, flows: BTreeMap<String, LearnedCounts>) -> anyhow::Result<()> {
    let file = LearnedFile {
        version: FORMAT_VERSION,
        flows,
    };
    write_atomic(&learned_path(dir), &serde_json::to_vec_pretty(&file)?)
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a mix.
///
/// The temporary file has a fixed name (`.<name>.tmp`), and any temporary file an earlier
/// process left (a crash, a full disk) is removed first, so that a stale one cannot hold the
/// space the next write needs. A failed write removes its own temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let prefix = format!(".{name}.tmp");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let tmp = dir.join(&prefix);
    let written = (|| -> anyhow::Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
