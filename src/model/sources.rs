//! Finding and reading `.flow` files: the one place the model touches the file system.

use super::compile::{compile_files, Compilation};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no .flow files found")]
    Empty(PathBuf),
}

/// Expands the given paths: a file stands for itself, a directory for every `*.flow` file below
/// it (sorted, so that compilation order and diagnostics are stable).
pub fn collect_flow_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| LoadError::Io {
            path: p.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            out[before..].sort();
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |e| LoadError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io)?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "flow") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and compiles every flow file under `paths`.
pub fn load(paths: &[PathBuf]) -> Result<Compilation, LoadError> {
    let files = collect_flow_files(paths)?;
    if files.is_empty() {
        return Err(LoadError::Empty(paths.first().cloned().unwrap_or_default()));
    }
    let mut read = Vec::with_capacity(files.len());
    for f in files {
        // Read at most one byte past the size limit: a 10 GB file costs no more than a 1 MB one.
        let bytes = read_capped(&f, crate::syntax::MAX_FILE_BYTES as u64 + 1).map_err(|e| {
            LoadError::Io {
                path: f.clone(),
                source: e,
            }
        })?;
        read.push((f.display().to_string(), bytes));
    }
    Ok(compile_files(read))
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(cap).read_to_end(&mut buf)?;
    Ok(buf)
}
