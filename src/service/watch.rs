//! Watching the flow files. Editors save in many ways (write in place, write a temporary file
//! and rename it over the original, delete and recreate), so every event on a `.flow` file in
//! the watched directory counts, and events are debounced: a reload happens 50 ms after the
//! last of a burst, once the editor has finished.
//!
//! The watch must outlive the directory itself: `rm -rf models` and a new `models`, or a
//! symbolic link swapped to another directory, leave a watch on an inode that is gone. So the
//! parent directory is watched too, and any event on the models path re-establishes the watch
//! (and reloads). Hidden files (editors' `.#t.flow` locks, `.t.flow.swp`) do not count, except
//! `..data`: a Kubernetes ConfigMap is updated by swapping that link to a new hidden directory,
//! and the visible `t.flow -> ..data/t.flow` links never change themselves.

use super::run::Control;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

const DEBOUNCE: Duration = Duration::from_millis(50);

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchGuard(tokio::task::JoinHandle<()>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching `models` (a directory or a file) and its parent.
pub fn watch(models: &Path, control: mpsc::UnboundedSender<Control>) -> anyhow::Result<WatchGuard> {
    // Absolute, so that event paths from both watches compare with it (links not resolved:
    // a swapped link must still be seen as the models path).
    let models = std::path::absolute(models)?;
    let parent = models
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    // Only what matters is sent on: other files in the parent (logs being written) must not
    // keep a burst open. Each event says (whether it calls for a reload, whether the models
    // path itself was replaced).
    let (tx, mut rx) = mpsc::unbounded_channel::<(bool, bool)>();
    let seen = models.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
                let replaced = ev.paths.contains(&seen);
                let relevant = ev.paths.iter().any(|p| is_relevant(&seen, p));
                if relevant || replaced {
                    let _ = tx.send((relevant, replaced));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("Watching the flow files: {e}"),
        })?;
    watcher.watch(&parent, RecursiveMode::NonRecursive)?;
    watch_models(&mut watcher, &models);
    tracing::info!(dir = %models.display(), "Watching the flow files for changes.");
    let task = tokio::spawn(async move {
        // The watcher lives in this task: it re-watches the models path when it is replaced.
        let mut watcher = watcher;
        while let Some((mut relevant, mut replaced)) = rx.recv().await {
            // Debounce: wait until the burst is over.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some((r, p))) => {
                        relevant |= r;
                        replaced |= p;
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if replaced {
                watch_models(&mut watcher, &models);
            }
            if !relevant {
                continue;
            }
            tracing::info!("The flow files changed: reloading.");
            if control.send(Control::Reload).is_err() {
                return;
            }
        }
    });
    Ok(WatchGuard(task))
}

/// (Re-)establishes the recursive watch on the models path, if it exists now.
fn watch_models(watcher: &mut notify::RecommendedWatcher, models: &Path) {
    // The old watch may be gone with its inode already; the error then says nothing new.
    let _ = watcher.unwatch(models);
    if models.exists() {
        if let Err(e) = watcher.watch(models, RecursiveMode::Recursive) {
            tracing::warn!(path = %models.display(), "Watching the flow files: {e}");
        }
    }
}

/// Whether an event on `path` can change what a reload of `models` reads.
fn is_relevant(models: &Path, path: &Path) -> bool {
    if path == models {
        return true;
    }
    let Ok(rel) = path.strip_prefix(models) else {
        return false;
    };
    let name = rel.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"");
    if name == b"..data" {
        return true;
    }
    !name.starts_with(b".") && rel.extension().is_some_and(|e| e == "flow")
}

#[cfg(test)]
mod tests {
    use super::is_relevant;
    use std::path::Path;

    fn check(path: &str, expect: bool) {
        assert_eq!(
            is_relevant(Path::new("/m/models"), Path::new(path)),
            expect,
            "{path}"
        );
    }

    #[test]
    fn flow_files_the_directory_and_the_configmap_link_count_and_hidden_files_do_not() {
        check("/m/models", true);
        check("/m/models/t.flow", true);
        check("/m/models/sub/t.flow", true);
        check("/m/models/..data", true);
        check("/m/models/.#t.flow", false);
        check("/m/models/.t.flow.swp", false);
        check("/m/models/t.flow~", false);
        check("/m/other.flow", false);
        check("/m/models2/t.flow", false);
    }
}
