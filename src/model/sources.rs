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
/// it (sorted, so that compilation order and diagnostics are stable). Below a directory, hidden
/// entries (a name starting with `.`) are skipped: editors' lock and swap files (`.#t.flow`),
/// and the versioned folders of a Kubernetes ConfigMap (`..2024_01/`, `..data`), whose files
/// are seen once, through the `t.flow -> ..data/t.flow` links beside them. Symbolic links are
/// followed, to files and (to a depth of 16) to directories.
pub fn collect_flow_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| LoadError::Io {
            path: p.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            let before = out.len();
            walk(p, &mut out, 0)?;
            out[before..].sort();
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// How deep the walk follows directories (a loop of links ends here).
const MAX_DEPTH: usize = 16;

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), LoadError> {
    let io = |e| LoadError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let mut ft = entry.file_type().map_err(io)?;
        if ft.is_symlink() {
            // A link to a directory is walked; a link to a file is read through; a dangling
            // link to a `.flow` file is reported when it is read.
            if let Ok(meta) = std::fs::metadata(&path) {
                ft = meta.file_type();
            }
        }
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, out, depth + 1)?;
            }
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
