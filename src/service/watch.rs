//! Watching the flow files. Editors save in many ways (write in place, write a temporary file
//! and rename it over the original, delete and recreate), so every event on a `.flow` file in
//! the watched directory counts, and events are debounced: a reload happens 50 ms after the
//! last of a burst, once the editor has finished.

use super::run::Control;
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

const DEBOUNCE: Duration = Duration::from_millis(50);

/// Starts watching; the returned watcher must be kept alive.
pub fn watch(
    models: &Path,
    control: mpsc::UnboundedSender<Control>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let relevant = ev
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|e| e == "flow"));
                if relevant && !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(());
                }
            }
            Err(e) => tracing::warn!("Watching the flow files: {e}"),
        })?;
    let dir = if models.is_dir() {
        models.to_path_buf()
    } else {
        models
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    tracing::info!(dir = %dir.display(), "Watching the flow files for changes.");
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the burst is over.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::info!("The flow files changed: reloading.");
            if control.send(Control::Reload).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}
