//! Discovering a flow from observations (patent [0105], claim 5): the directly-follows graph of
//! a log (which activity follows which, how often, after how long), written out as a `.flow`
//! file an operator can read, check and edit. States are the activities; observed counts become
//! the a priori counts; activities that start a case are initial, those never followed are
//! terminal (or artifacts when marked as failures); each state with enough dwell samples gets a
//! timeout at the 99th percentile of its observed dwell.
//!
//! The CSV path works on the file's bytes without allocating per row, since it is meant for
//! logs of millions of events.

use super::log::parse_log_time;
use super::log::{CsvColumns, CASE_END};
use crate::syntax::format_duration_ms;
use foldhash::HashMap;
use std::fmt::Write;

/// The directly-follows graph of a log.
#[derive(Debug, Default, Clone)]
pub struct Dfg {
    /// Activities in order of first appearance.
    pub activities: Vec<String>,
    pub occurrences: Vec<u64>,
    /// Cases that start / end with each activity.
    pub starts: Vec<u64>,
    pub ends: Vec<u64>,
    pub edges: HashMap<(u32, u32), u64>,
    /// Per activity: time until the next event of the same case, ms.
    pub dwell_ms: Vec<Vec<f32>>,
    /// Per activity: how many of its events were marked as failures.
    pub failures: Vec<u64>,
    pub events: u64,
    pub cases: u64,
}

/// Builds a `Dfg` one event at a time; events of a case must come in time order, cases may
/// interleave. Keys borrow from the input.
pub struct DfgBuilder<'a> {
    dfg: Dfg,
    activity_ids: HashMap<&'a [u8], u32>,
    /// Per case: last activity and its time.
    last: HashMap<&'a [u8], (u32, i64)>,
    /// Whether a repeated activity is a transition to itself.
    count_repeats: bool,
}

impl<'a> DfgBuilder<'a> {
    pub fn new(count_repeats: bool) -> DfgBuilder<'a> {
        DfgBuilder {
            dfg: Dfg::default(),
            activity_ids: HashMap::default(),
            last: HashMap::default(),
            count_repeats,
        }
    }

    fn activity(&mut self, name: &'a [u8]) -> u32 {
        if let Some(&i) = self.activity_ids.get(name) {
            return i;
        }
        let i = self.dfg.activities.len() as u32;
        self.activity_ids.insert(name, i);
        self.dfg
            .activities
            .push(String::from_utf8_lossy(name).into_owned());
        for v in [
            &mut self.dfg.occurrences,
            &mut self.dfg.starts,
            &mut self.dfg.ends,
            &mut self.dfg.failures,
        ] {
            v.push(0);
        }
        self.dfg.dwell_ms.push(Vec::new());
        i
    }

    pub fn event(&mut self, case: &'a [u8], activity: &'a [u8], time_ms: i64, failure: bool) {
        let a = self.activity(activity);
        self.dfg.events += 1;
        match self.last.get_mut(case) {
            None => {
                self.dfg.cases += 1;
                self.dfg.starts[a as usize] += 1;
                self.last.insert(case, (a, time_ms));
            }
            Some(prev) => {
                if prev.0 == a && !self.count_repeats {
                    return; // A repeated notification, not a step.
                }
                *self.dfg.edges.entry((prev.0, a)).or_insert(0) += 1;
                self.dfg.dwell_ms[prev.0 as usize].push((time_ms - prev.1).max(0) as f32);
                *prev = (a, time_ms);
            }
        }
        self.dfg.occurrences[a as usize] += 1;
        if failure {
            self.dfg.failures[a as usize] += 1;
        }
    }

    pub fn finish(mut self) -> Dfg {
        for (_, (a, _)) in self.last.drain() {
            self.dfg.ends[a as usize] += 1;
        }
        self.dfg
    }
}

/// The DFG of a CSV process log, read from its bytes. Falls back to the general CSV reader for
/// files with quoted fields, another delimiter, a time in several columns, or a header without
/// the columns (its message says more).
pub fn dfg_from_csv(bytes: &[u8], cols: &CsvColumns, count_repeats: bool) -> anyhow::Result<Dfg> {
    let general = || -> anyhow::Result<Dfg> {
        let text = std::str::from_utf8(bytes)?;
        let mut rows = Vec::new();
        super::log::for_each_row(text, cols, |r| {
            rows.push((r.case.to_string(), r.activity.to_string(), r.time_ms))
        })?;
        let mut b = DfgBuilder::new(count_repeats);
        for (c, a, t) in &rows {
            b.event(c.as_bytes(), a.as_bytes(), *t, false);
        }
        Ok(b.finish())
    };
    let [time_col] = cols.time.as_slice() else {
        return general();
    };
    if bytes.contains(&b'"') || cols.delimiter != ',' {
        return general();
    }
    let mut lines = bytes.split(|b| *b == b'\n');
    let header = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("the file is empty"))?;
    let header = std::str::from_utf8(header)?
        .trim_start_matches('\u{feff}')
        .trim_end();
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let find = |want: &str| names.iter().position(|n| *n == want);
    let (Some(ci), Some(ai), Some(ti)) = (find(&cols.case), find(&cols.activity), find(time_col))
    else {
        return general();
    };
    let width = ci.max(ai).max(ti) + 1;
    let mut b = DfgBuilder::new(count_repeats);
    let mut fields: [&[u8]; 64] = [&[]; 64];
    if width > fields.len() {
        anyhow::bail!("the case, activity and time columns must be among the first 64");
    }
    for (n, line) in lines.enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let mut count = 0;
        for f in line.split(|b| *b == b',') {
            if count < width {
                fields[count] = f;
            }
            count += 1;
            if count >= width {
                break;
            }
        }
        if count < width {
            anyhow::bail!("line {}: too few fields", n + 2);
        }
        let time = std::str::from_utf8(fields[ti])
            .ok()
            .and_then(|t| parse_log_time(t.trim()));
        let Some(time) = time else {
            anyhow::bail!(
                "line {}: unreadable time `{}`",
                n + 2,
                String::from_utf8_lossy(fields[ti])
            );
        };
        b.event(fields[ci], fields[ai], time, false);
    }
    Ok(b.finish())
}

/// How to write a discovered flow.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub flow_name: String,
    /// Where it came from, for the header comment.
    pub source: String,
    /// The key path, as written in a `.flow` file.
    pub key: String,
    /// The field whose value is the activity, as written in a `.flow` file.
    pub activity_field: String,
    /// Activities to treat as failures whatever the log says.
    pub failures: Vec<String>,
    /// Write the observed counts as a priori counts.
    pub priors: bool,
    /// Suggest timeouts at the 99th percentile of dwell.
    pub timeouts: bool,
    pub count_repeats: bool,
}

/// A name the language accepts, from any text: lower case, `_` for anything else, runs of `_`
/// collapsed, never empty, never starting with a digit, never a reserved word.
pub fn identifier(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s = s.trim_matches('_').to_string();
    let mut s = if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("a{s}")
    } else {
        s
    };
    const RESERVED: [&str; 11] = [
        "after", "for", "and", "or", "not", "in", "exists", "glob", "true", "false", "null",
    ];
    if RESERVED.contains(&s.as_str()) {
        s.push_str("_activity");
    }
    s
}

/// A state name for an activity, distinct from the names already `taken` and from the states
/// discovery adds itself (`done`, `timed_out`).
fn state_name(activity: &str, taken: &mut Vec<String>) -> String {
    let mut s = identifier(activity);
    if s == "done" || s == "timed_out" {
        s.push_str("_activity");
    }
    let base = s.clone();
    let mut n = 2;
    while taken.contains(&s) {
        s = format!("{base}_{n}");
        n += 1;
    }
    taken.push(s.clone());
    s
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration for a timeout: the dwell rounded up to a whole number of a readable unit.
fn nice_duration(ms: f64) -> i64 {
    let ms = ms.max(1000.0);
    for unit in [86_400_000.0, 3_600_000.0, 60_000.0, 1000.0] {
        if ms >= 2.0 * unit {
            return ((ms / unit).ceil() * unit) as i64;
        }
    }
    (ms / 1000.0).ceil() as i64 * 1000
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes the flow. The result compiles without errors (a test checks it on every log).
pub fn render(dfg: &Dfg, opts: &RenderOptions) -> String {
    let n = dfg.activities.len();
    let mut taken = Vec::new();
    let names: Vec<String> = dfg
        .activities
        .iter()
        .map(|a| state_name(a, &mut taken))
        .collect();
    let followed: Vec<bool> = (0..n)
        .map(|a| {
            dfg.edges
                .keys()
                .any(|(f, t)| *f as usize == a && (*t as usize != a || opts.count_repeats))
        })
        .collect();
    let is_failure: Vec<bool> = (0..n)
        .map(|a| {
            opts.failures.contains(&dfg.activities[a])
                || dfg.failures[a] * 2 > dfg.occurrences[a].max(1)
        })
        .collect();
    // Final: never followed by anything. A failure that is followed (a retry) stays a state.
    let mut artifact: Vec<bool> = (0..n).map(|a| is_failure[a] && !followed[a]).collect();
    let mut terminal: Vec<bool> = (0..n).map(|a| !is_failure[a] && !followed[a]).collect();
    // A flow needs an initial state (F011). When every activity that starts a case is also
    // never followed (cases of a single event), those activities become the initial states
    // and their cases end in `done`, as any case that ends in a state that is not final.
    if !(0..n).any(|a| dfg.starts[a] > 0 && !artifact[a] && !terminal[a]) {
        for a in (0..n).filter(|&a| dfg.starts[a] > 0) {
            artifact[a] = false;
            terminal[a] = false;
        }
    }
    let is_final = |a: usize| artifact[a] || terminal[a];
    let needs_done = (0..n).any(|a| dfg.ends[a] > 0 && !is_final(a));

    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Discovered by `flowcast discover` from {}:",
        opts.source
    );
    let _ = writeln!(
        o,
        "# {} events in {} cases, {} activities, {} distinct transitions.",
        thousands(dfg.events),
        thousands(dfg.cases),
        n,
        dfg.edges.len()
    );
    let _ = writeln!(
        o,
        "# The counts are what was observed; keep them as a priori knowledge, or edit them."
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "flow {} {{", opts.flow_name);
    let _ = writeln!(
        o,
        "    description {}",
        quote(&format!("Discovered from {}", opts.source))
    );
    let _ = writeln!(o, "    key {}", opts.key);
    let _ = writeln!(o);
    for a in 0..n {
        let kind = if artifact[a] {
            "artifact"
        } else if terminal[a] {
            "terminal"
        } else if dfg.starts[a] > 0 {
            "initial "
        } else {
            "state   "
        };
        let mut note = format!("{} events", thousands(dfg.occurrences[a]));
        if dfg.starts[a] > 0 {
            note.push_str(&format!(", starts {} cases", thousands(dfg.starts[a])));
        }
        if is_failure[a] && followed[a] {
            note.push_str("; marked as a failure but followed by other activities (a retry?)");
        }
        let _ = writeln!(
            o,
            "    {kind} {} {}  # {note}",
            names[a],
            quote(&dfg.activities[a])
        );
    }
    if needs_done {
        let _ = writeln!(o, "    # Cases that end without a final activity end here; a producer (or `flowcast eval`)");
        let _ = writeln!(o, "    # marks the end with a `{CASE_END}` message, otherwise such objects end by expiry.");
        let _ = writeln!(o, "    terminal done \"Case ended\"");
    }
    let timeouts: Vec<(usize, i64, usize)> = if opts.timeouts {
        (0..n)
            .filter(|&a| !artifact[a] && !terminal[a] && dfg.dwell_ms[a].len() >= 30)
            .map(|a| {
                let mut d = dfg.dwell_ms[a].clone();
                let last = d.len() - 1;
                let k = (((d.len() as f64) * 0.99).ceil() as usize)
                    .saturating_sub(1)
                    .min(last);
                let (_, p99, _) = d.select_nth_unstable_by(k, |x, y| x.total_cmp(y));
                (a, nice_duration(*p99 as f64), dfg.dwell_ms[a].len())
            })
            .collect()
    } else {
        Vec::new()
    };
    if !timeouts.is_empty() {
        let _ = writeln!(o, "    artifact timed_out \"Time Threshold Failure\"");
    }
    let _ = writeln!(o);
    for (activity, name) in dfg.activities.iter().zip(&names) {
        let _ = writeln!(
            o,
            "    on {} == {} -> {name}",
            opts.activity_field,
            quote(activity)
        );
    }
    if needs_done {
        let _ = writeln!(o, "    on event_type == \"{CASE_END}\" -> done");
    }
    if opts.priors {
        let _ = writeln!(o);
        let _ = writeln!(o, "    transitions {{");
        let mut edges: Vec<((u32, u32), u64)> = dfg.edges.iter().map(|(k, v)| (*k, *v)).collect();
        edges.sort_by(|a, b| {
            a.0 .0
                .cmp(&b.0 .0)
                .then(b.1.cmp(&a.1))
                .then(a.0 .1.cmp(&b.0 .1))
        });
        // Aligned up to a width that keeps the file readable (and `format!` in range: a
        // width over 65,535 panics); longer names are written as they are.
        let w = names
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .clamp(4, 40);
        for ((f, t), c) in edges {
            let _ = writeln!(
                o,
                "        {:w$} -> {:w$} {c}",
                names[f as usize], names[t as usize]
            );
        }
        if needs_done {
            for (a, name) in names.iter().enumerate() {
                if dfg.ends[a] > 0 && !is_final(a) {
                    let _ = writeln!(o, "        {name:w$} -> {:w$} {}", "done", dfg.ends[a]);
                }
            }
        }
        let _ = writeln!(o, "    }}");
    }
    let _ = writeln!(o, "    unlisted learn");
    if !timeouts.is_empty() {
        let _ = writeln!(o);
        for (a, ms, samples) in &timeouts {
            let _ = writeln!(
                o,
                "    timeout {} after {} -> timed_out  # 99th percentile of {} dwells",
                names[*a],
                format_duration_ms(*ms),
                thousands(*samples as u64)
            );
        }
    }
    if opts.count_repeats {
        let _ = writeln!(o);
        let _ = writeln!(o, "    learn {{ repeats count }}");
    }
    let _ = writeln!(o, "}}");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_valid_and_distinct() {
        let mut taken = Vec::new();
        assert_eq!(state_name("1", &mut taken), "a1");
        assert_eq!(
            state_name("compute.instance.create.end", &mut taken),
            "compute_instance_create_end"
        );
        assert_eq!(
            state_name("Compute Instance Create End", &mut taken),
            "compute_instance_create_end_2"
        );
        assert_eq!(state_name("not", &mut taken), "not_activity");
        assert_eq!(state_name("", &mut taken), "a");
    }

    #[test]
    fn nice_durations_round_up() {
        assert_eq!(nice_duration(61_000.0), 61_000);
        assert_eq!(nice_duration(130_500.0), 180_000);
        assert_eq!(nice_duration(3.2 * 86_400_000.0), 4 * 86_400_000);
    }
}
