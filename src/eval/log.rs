//! Event logs: CSV process logs (one row per event: case, activity, time) and JSONL message
//! streams, read into the messages the engine consumes, each tagged with its case.
//!
//! A CSV row becomes `{"event_type": ACTIVITY, "payload": {"case": CASE}}` at its time, so a
//! flow for a process log reads like any other (`key payload.case`, rules on `event_type`).
//! After the last row of each case a `flowcast.case_end` message marks where the case ended:
//! process logs know it, notification streams do not.

use crate::engine::message::{self, Message};
use crate::engine::time::parse_str;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// The event type that marks the end of a case in a process log.
pub const CASE_END: &str = "flowcast.case_end";

#[derive(Debug, Clone)]
pub struct CsvColumns {
    pub case: String,
    pub activity: String,
    pub time: String,
}

impl Default for CsvColumns {
    fn default() -> CsvColumns {
        CsvColumns {
            case: "CaseID".into(),
            activity: "ActivityID".into(),
            time: "CompleteTimestamp".into(),
        }
    }
}

/// One row of a process log, borrowed from the file's bytes.
pub struct Row<'a> {
    pub case: &'a str,
    pub activity: &'a str,
    pub time_ms: i64,
}

/// Splits one CSV line into fields; double quotes may enclose a field (`""` is a quote).
pub fn split_csv(line: &str, out: &mut Vec<String>) {
    out.clear();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if field.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
}

/// Reads a CSV process log row by row: the header names the columns.
pub fn for_each_row(
    text: &str,
    cols: &CsvColumns,
    mut f: impl FnMut(Row<'_>),
) -> anyhow::Result<usize> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("the file is empty"))?;
    let mut names = Vec::new();
    split_csv(header.trim_start_matches('\u{feff}'), &mut names);
    let find = |want: &str| {
        names.iter().position(|n| n.trim() == want).ok_or_else(|| {
            anyhow::anyhow!("no column `{want}` (the header has: {})", names.join(", "))
        })
    };
    let (ci, ai, ti) = (find(&cols.case)?, find(&cols.activity)?, find(&cols.time)?);
    let simple = !text.contains('"');
    let mut fields = Vec::new();
    let mut rows = 0;
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // The common case, no quotes: split without allocating.
        let (case, activity, time);
        let parts: Vec<&str>;
        if simple {
            parts = line.split(',').collect();
            let get = |i: usize| {
                parts
                    .get(i)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("line {}: too few fields", n + 2))
            };
            (case, activity, time) = (get(ci)?, get(ai)?, get(ti)?);
            let time_ms = parse_str(time.trim())
                .ok_or_else(|| anyhow::anyhow!("line {}: unreadable time `{time}`", n + 2))?;
            f(Row {
                case,
                activity,
                time_ms,
            });
        } else {
            split_csv(line, &mut fields);
            let get = |i: usize| {
                fields
                    .get(i)
                    .map(String::as_str)
                    .ok_or_else(|| anyhow::anyhow!("line {}: too few fields", n + 2))
            };
            let (c, a, t) = (get(ci)?, get(ai)?, get(ti)?);
            let time_ms = parse_str(t.trim())
                .ok_or_else(|| anyhow::anyhow!("line {}: unreadable time `{t}`", n + 2))?;
            f(Row {
                case: c,
                activity: a,
                time_ms,
            });
        }
        rows += 1;
    }
    Ok(rows)
}

/// Messages of a log, each with the index of its case; cases in order of first appearance.
#[derive(Debug, Default)]
pub struct Stream {
    pub messages: Vec<Message>,
    pub case_of: Vec<u32>,
    pub cases: Vec<String>,
}

impl Stream {
    fn case_index(&mut self, index: &mut HashMap<String, u32>, case: &str) -> u32 {
        if let Some(i) = index.get(case) {
            return *i;
        }
        let i = self.cases.len() as u32;
        self.cases.push(case.to_string());
        index.insert(case.to_string(), i);
        i
    }
}

/// A CSV process log as messages, with a `flowcast.case_end` after each case's last row.
pub fn read_csv(path: &Path, cols: &CsvColumns) -> anyhow::Result<Stream> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut rows: Vec<(u32, String, i64)> = Vec::new();
    let mut stream = Stream::default();
    let mut index = HashMap::new();
    for_each_row(&text, cols, |r| {
        let c = stream.case_index(&mut index, r.case);
        rows.push((c, r.activity.to_string(), r.time_ms));
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // The last row of each case, to place its end marker right after it.
    let mut last = vec![usize::MAX; stream.cases.len()];
    for (i, (c, _, _)) in rows.iter().enumerate() {
        last[*c as usize] = i;
    }
    for (i, (c, activity, t)) in rows.into_iter().enumerate() {
        let case = stream.cases[c as usize].clone();
        let mut m = message::from_value(json!({"event_type": activity, "payload": {"case": case}}))
            .expect("an object is a message");
        m.time_ms = Some(t);
        stream.messages.push(m);
        stream.case_of.push(c);
        if last[c as usize] == i {
            let mut end =
                message::from_value(json!({"event_type": CASE_END, "payload": {"case": case}}))
                    .expect("an object is a message");
            end.time_ms = Some(t);
            stream.messages.push(end);
            stream.case_of.push(c);
        }
    }
    Ok(stream)
}

/// A JSONL stream as messages; the case of a message is its object under `key` (a function
/// from message to key, usually the flow's key paths). Lines that are not messages, or have no
/// key, are skipped and counted.
pub fn read_jsonl(
    path: &Path,
    key: impl Fn(&Message) -> Option<String>,
) -> anyhow::Result<(Stream, usize)> {
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut stream = Stream::default();
    let mut index = HashMap::new();
    let mut skipped = 0;
    for line in text.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(m) = message::decode(line) else {
            skipped += 1;
            continue;
        };
        let Some(k) = key(&m) else {
            skipped += 1;
            continue;
        };
        let c = stream.case_index(&mut index, &k);
        stream.messages.push(m);
        stream.case_of.push(c);
    }
    Ok((stream, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_and_without_quotes() {
        let mut out = Vec::new();
        split_csv(r#"1,"a, b","say ""hi""""#, &mut out);
        assert_eq!(out, ["1", "a, b", "say \"hi\""]);
        split_csv("x,,y", &mut out);
        assert_eq!(out, ["x", "", "y"]);
    }
}
