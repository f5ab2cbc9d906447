//! `flowcast replay`: run the engine over recorded messages (JSONL, one message a line, plain
//! or in an oslo envelope). Records go to stdout as JSON lines; a summary goes to stderr.

use super::{load_flows, ExitCode};
use crate::engine::message::{decode_projected, strip_bom, LineEnd};
use crate::engine::{Engine, Stats};
use crate::service::state_dir;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Directory (or file) of flow definitions.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Messages, one JSON object a line; `-` or nothing reads stdin.
    pub input: Option<PathBuf>,
    /// Load learned counts from this directory before, and save them after.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print the summary as JSON (on stderr) instead of text.
    #[arg(long)]
    pub summary_json: bool,
    /// Emit only alerts and resolutions, not outcomes or unexpected transitions.
    #[arg(long)]
    pub alerts_only: bool,
    /// Also emit a `prediction` record each time an object enters a state.
    #[arg(long)]
    pub trace: bool,
    /// Messages stamped further ahead of this machine's clock than this (a duration, or `off`)
    /// are counted as `future` and handled at the current time, never moving it.
    #[arg(long, default_value = "5m")]
    pub max_future: String,
    /// A message whose key is longer than this many bytes is malformed (`key_too_long`).
    #[arg(long, default_value_t = crate::engine::Limits::default().max_key_bytes)]
    pub max_key_bytes: usize,
    /// Bytes for remembering finished objects (late messages about them), all flows together.
    #[arg(long, default_value_t = crate::engine::Limits::default().finished_bytes)]
    pub finished_budget_bytes: usize,
    /// Learn nothing from these messages: predictions and surprise use the counts loaded from
    /// `--state-dir` (a baseline learned from healthy data) as they are, and the directory is
    /// left unchanged.
    #[arg(long, requires = "state_dir")]
    pub frozen: bool,
    /// Engines to run on as many threads, each owning the objects whose key hashes to it and
    /// sharing what it learns with the others after every `--shard-batch` lines (`0`: one per
    /// core). The records are one engine's, in another order; predictions may differ by what
    /// the other shards learned within the last batch.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Lines per batch with `--shards`, at most (from 64, growing with the lines read: a
    /// sixteenth of them): the most steps a shard predicts without the others' learning.
    #[arg(long, default_value_t = 1024, hide = true)]
    pub shard_batch: usize,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let flows = match load_flows(std::slice::from_ref(&args.models), None)? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let shards = match args.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n.min(256),
    };
    let mut engines = Vec::with_capacity(shards);
    for index in 0..shards {
        let mut engine = Engine::new(flows.clone());
        if shards > 1 {
            engine.set_shard(index as u32, shards as u32);
        }
        engines.push(engine);
    }
    let max_future = match args.max_future.as_str() {
        "off" => None,
        d => match crate::syntax::parse_duration_ms(d) {
            Some(ms) if ms > 0 => Some(ms),
            _ => {
                eprintln!("error: --max-future {d}: not a positive duration (like `5m`) or `off`");
                return Ok(ExitCode::Usage);
            }
        },
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let learned = match &args.state_dir {
        Some(dir) => state_dir::load_learned(dir)?,
        None => None,
    };
    for engine in &mut engines {
        engine.trace = args.trace;
        engine.set_horizon(max_future.map(|ms| wall.saturating_add(ms)));
        engine.set_limits(crate::engine::Limits {
            max_key_bytes: args.max_key_bytes,
            finished_bytes: args.finished_budget_bytes / shards,
        });
        if let Some(learned) = &learned {
            let (loaded, dropped) = engine.import_learned(learned);
            if engine.shard().is_none_or(|s| s.index == 0) {
                let dir = args.state_dir.as_ref().map(|d| d.display().to_string());
                tracing::info!(flows = loaded, dropped, dir, "Loaded learned counts.");
            }
        }
        if args.frozen {
            engine.freeze();
        }
    }
    let input: Box<dyn Read> = match &args.input {
        None => Box::new(std::io::stdin()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return Ok(ExitCode::Usage);
            }
        },
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let input = BufReader::with_capacity(1 << 20, input);
    let stats = if shards == 1 {
        replay(&mut engines[0], input, &mut out, args.alerts_only)?
    } else {
        replay_sharded(
            &mut engines,
            input,
            &mut out,
            args.alerts_only,
            args.shard_batch.max(1),
        )?
    };
    out.flush()?;
    if let Some(dir) = args.state_dir.as_ref().filter(|_| !args.frozen) {
        // After the last exchange every shard's model holds every learned step.
        state_dir::save_learned(dir, engines[0].export_learned())?;
    }
    let in_flight: usize = engines.iter().map(Engine::objects_in_flight).sum();
    if args.summary_json {
        let mut v = serde_json::to_value(&stats)?;
        v["in_flight"] = in_flight.into();
        if let Some(peak) = peak_rss_bytes() {
            v["peak_rss_bytes"] = peak.into();
        }
        eprintln!("{v}");
    } else {
        eprintln!("{}", summary(&stats, in_flight));
    }
    Ok(ExitCode::Ok)
}

/// Feeds every line to the engine and writes the records; returns the final counters.
pub fn replay(
    engine: &mut Engine,
    mut input: impl BufRead,
    out: &mut impl Write,
    alerts_only: bool,
) -> anyhow::Result<Stats> {
    let mut line = Vec::with_capacity(4096);
    let mut records = Vec::new();
    let mut line_no = 0u64;
    let projection = engine.projection();
    let mut cutter = crate::engine::message::LineCutter::default();
    loop {
        line.clear();
        let end = loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break cutter.finish();
            }
            let (used, end) = cutter.feed(chunk, &mut line);
            input.consume(used);
            if end.is_some() {
                break end;
            }
        };
        let Some(end) = end else {
            break;
        };
        line_no += 1;
        let decoded = match end {
            LineEnd::TooLong(n) => Err(crate::engine::message::DecodeError::TooLarge(n)),
            LineEnd::Line => {
                let text = trim_ascii(strip_bom(&line));
                if text.is_empty() {
                    continue;
                }
                decode_projected(text, &projection)
            }
        };
        match decoded {
            Ok(msg) => engine.observe(&msg, &mut records),
            Err(e) => {
                engine.count_malformed();
                let n = engine.stats.malformed;
                // Bounded logging: the first ten, then every thousandth.
                if n <= 10 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        line = line_no,
                        malformed = n,
                        "Skipped a malformed message: {e}"
                    );
                }
            }
        }
        write_records(&mut records, out, alerts_only)?;
    }
    Ok(engine.stats.clone())
}

/// One batch of lines for the shards: the text, each line's span (or its length when it was
/// over the limit) and number.
#[derive(Default)]
struct Lines {
    text: Vec<u8>,
    spans: Vec<(usize, usize, LineEnd, u64)>,
}

/// A batch as the shards share it: each decodes its slice of the lines, all apply all of them
/// (each to the objects it owns), then each adds what the others learned.
struct ShardBatch {
    lines: Lines,
    decoded: Vec<std::sync::Mutex<Vec<Decoded>>>,
    deltas: Vec<std::sync::Mutex<crate::engine::shard::ShardDelta>>,
}

/// A decoded message with the flows, keys and shards it goes to (decoded lines only).
type Decoded = (crate::engine::message::Message, crate::engine::Routed);

/// `replay` on several engines (`--shards`), one thread each. The lines are read here and
/// handed over in batches; the shards decode a batch together (each its share), then each
/// applies every message to the objects it owns, then they exchange what they learned. The
/// steps are the same at every run: the records come out batch by batch, shard by shard.
pub fn replay_sharded(
    engines: &mut [Engine],
    mut input: impl BufRead,
    out: &mut impl Write,
    alerts_only: bool,
    batch_lines: usize,
) -> anyhow::Result<Stats> {
    use std::sync::mpsc;
    use std::sync::{Arc, Barrier, Mutex};
    let n = engines.len();
    let barrier = Barrier::new(n);
    let projection = engines[0].projection();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(2 * n);
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for (w, engine) in engines.iter_mut().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<Arc<ShardBatch>>(3);
            senders.push(tx);
            let (barrier, projection, done) = (&barrier, projection.clone(), done_tx.clone());
            handles.push(scope.spawn(move || -> anyhow::Result<()> {
                let mut records = Vec::new();
                // A shard never leaves between two barriers (the others would wait for it for
                // good): an error is kept and returned when the input ends.
                let mut failed = None;
                // One barrier per batch: between two, a shard applies the batch decoded
                // before it (`current`) and decodes its share of the next, so the two phases
                // even each other out; after it, every share of the next batch is decoded and
                // every shard's deltas from `current` are ready to be added.
                let mut current: Option<Arc<ShardBatch>> = None;
                loop {
                    let next = rx.recv().ok();
                    if next.is_none() && current.is_none() {
                        break;
                    }
                    let mut text = Vec::new();
                    if let Some(batch) = &current {
                        // Apply every message, in order, to the objects this shard owns.
                        for slice in &batch.decoded {
                            let slice = slice.lock().expect("not poisoned");
                            for (msg, routed) in slice.iter() {
                                engine.observe_routed(msg, routed, &mut records);
                                if let Err(e) = write_records(&mut records, &mut text, alerts_only)
                                {
                                    records.clear();
                                    failed.get_or_insert(e);
                                }
                            }
                        }
                        *batch.deltas[w].lock().expect("not poisoned") = engine.take_deltas();
                    }
                    if let Some(batch) = &next {
                        // Decode this shard's share of the next batch.
                        let spans = &batch.lines.spans;
                        let (from, to) = (spans.len() * w / n, spans.len() * (w + 1) / n);
                        let mut mine = Vec::with_capacity(to - from);
                        for &(start, end, kind, line_no) in &spans[from..to] {
                            let d = match kind {
                                LineEnd::TooLong(len) => {
                                    Err(crate::engine::message::DecodeError::TooLarge(len))
                                }
                                LineEnd::Line => {
                                    decode_projected(&batch.lines.text[start..end], &projection)
                                }
                            };
                            match d {
                                Ok(msg) => {
                                    let routed = engine.route(&msg);
                                    mine.push((msg, routed));
                                }
                                Err(e) => {
                                    engine.count_malformed();
                                    let m = engine.stats.malformed;
                                    if m <= 10 || m.is_multiple_of(1000) {
                                        tracing::warn!(
                                            line = line_no,
                                            shard = w,
                                            malformed = m,
                                            "Skipped a malformed message: {e}"
                                        );
                                    }
                                }
                            }
                        }
                        *batch.decoded[w].lock().expect("not poisoned") = mine;
                    }
                    barrier.wait();
                    if let Some(batch) = current.take() {
                        // The messages this shard decoded are freed by it (a free on another
                        // thread than the allocation's is slow).
                        drop(std::mem::take(
                            &mut *batch.decoded[w].lock().expect("not poisoned"),
                        ));
                        // Add what the others learned, in shard order.
                        for (o, d) in batch.deltas.iter().enumerate() {
                            if o != w {
                                engine.apply_deltas(&d.lock().expect("not poisoned"));
                            }
                        }
                        // Sent in vain when the writer stopped; the batches already handed
                        // out are still gone through, by every shard alike.
                        let _ = done.send((w, text));
                    }
                    current = next;
                }
                failed.map_or(Ok(()), Err)
            }));
        }
        drop(done_tx);
        let mut cutter = crate::engine::message::LineCutter::default();
        let mut line_no = 0u64;
        let mut in_flight = 0usize;
        // Batches handed out, oldest first: their buffers are used again once the shards are
        // done with them (fresh ones cost page faults and copies as they grow).
        let mut sent: std::collections::VecDeque<Arc<ShardBatch>> = Default::default();
        let mut spare: Option<Lines> = None;
        let mut pending: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut collect = |in_flight: &mut usize, out: &mut dyn Write| -> anyhow::Result<bool> {
            // Waits for one batch's outputs and writes them in shard order.
            while pending.iter().any(Option::is_none) {
                match done_rx.recv() {
                    Ok((w, text)) => pending[w] = Some(text),
                    Err(_) => return Ok(false),
                }
            }
            for p in pending.iter_mut() {
                out.write_all(&p.take().unwrap_or_default())?;
            }
            *in_flight -= 1;
            Ok(true)
        };
        let mut eof = false;
        while !eof {
            let mut lines = spare.take().unwrap_or_default();
            lines.text.clear();
            lines.spans.clear();
            // Small batches while the model is young (what the others learned within a batch
            // is a large part of all it knows), up to `batch_lines`: at most 1/16 of the lines
            // so far go unshared.
            let size = (line_no as usize / 16).clamp(64.min(batch_lines), batch_lines);
            while lines.spans.len() < size {
                // Straight into the batch's text: one copy of each line.
                let start = lines.text.len();
                let end = loop {
                    let chunk = input.fill_buf()?;
                    if chunk.is_empty() {
                        break cutter.finish();
                    }
                    let (used, end) = cutter.feed_at(chunk, &mut lines.text, start);
                    input.consume(used);
                    if end.is_some() {
                        break end;
                    }
                };
                let Some(end) = end else {
                    eof = true;
                    break;
                };
                line_no += 1;
                if end != LineEnd::Line {
                    lines.text.truncate(start);
                    lines.spans.push((start, start, end, line_no));
                    continue;
                }
                let line = &lines.text[start..];
                let inner = strip_bom(line);
                let text = trim_ascii(inner);
                if text.is_empty() {
                    lines.text.truncate(start);
                    continue;
                }
                // Where the trimmed text starts: after the BOM and the leading blanks.
                let lead =
                    (line.len() - inner.len()) + (inner.len() - inner.trim_ascii_start().len());
                let (from, to) = (start + lead, start + lead + text.len());
                lines.spans.push((from, to, end, line_no));
            }
            if lines.spans.is_empty() {
                break;
            }
            let batch = Arc::new(ShardBatch {
                lines,
                decoded: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
                deltas: (0..n).map(|_| Mutex::new(Default::default())).collect(),
            });
            for tx in &senders {
                if tx.send(Arc::clone(&batch)).is_err() {
                    eof = true;
                }
            }
            sent.push_back(batch);
            in_flight += 1;
            // Two batches ahead: the shards decode one while they apply the other, and the
            // next is read meanwhile.
            if in_flight > 2 {
                if !collect(&mut in_flight, out)? {
                    break;
                }
                if let Some(done) = sent.pop_front() {
                    spare = Arc::try_unwrap(done).ok().map(|b| b.lines);
                }
            }
        }
        drop(senders);
        while in_flight > 0 {
            if !collect(&mut in_flight, out)? {
                break;
            }
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a shard's thread panicked"))??;
        }
        Ok(())
    })?;
    let mut stats = Stats::default();
    for e in engines.iter() {
        stats.add(&e.stats);
    }
    Ok(stats)
}

fn write_records(
    records: &mut Vec<crate::engine::output::Record>,
    out: &mut impl Write,
    alerts_only: bool,
) -> anyhow::Result<()> {
    for r in records.drain(..) {
        if alerts_only
            && !matches!(
                r,
                crate::engine::output::Record::Alert(_)
                    | crate::engine::output::Record::Resolved(_)
            )
        {
            continue;
        }
        serde_json::to_writer(&mut *out, &r)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The process's peak resident memory (`VmHWM`), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(start);
    &b[start..end]
}

pub fn summary(s: &Stats, in_flight: usize) -> String {
    format!(
        "replay: {} read ({} malformed), {} matched, {} unmatched, {} missing key, {} late, {} future, {} after end, {} multi-flow; \
         {} transitions ({} unexpected), {} alerts, {} resolved, {} outcomes ({} timeouts, {} expired); {} in flight",
        s.messages + s.malformed,
        s.malformed,
        s.matched,
        s.unmatched,
        s.missing_key,
        s.late,
        s.future,
        s.after_end,
        s.multi_flow,
        s.transitions,
        s.unexpected,
        s.alerts,
        s.resolved,
        s.outcomes,
        s.timeouts,
        s.expired,
        in_flight
    )
}
