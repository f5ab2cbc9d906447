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
    let mut records = Records::new(line);
    if records.next_record(out).is_none() {
        out.clear();
        out.push(String::new());
    }
}

/// The CSV records of a text (RFC 4180): fields separated by commas, records by line ends
/// (`\n` or `\r\n`), double quotes around a field that holds commas, quotes (`""`) or line
/// ends. A quoted field may span lines, so a record is not a line.
pub struct Records<'a> {
    text: &'a str,
    pos: usize,
    /// The line the next record starts on (1-based), for messages.
    line: usize,
}

impl<'a> Records<'a> {
    pub fn new(text: &'a str) -> Records<'a> {
        Records {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// Reads the next record into `out`; `None` at the end of the text, otherwise the line it
    /// starts on and whether a quoted field was left open at the end of the text.
    pub fn next_record(&mut self, out: &mut Vec<String>) -> Option<(usize, bool)> {
        out.clear();
        if self.pos >= self.text.len() {
            return None;
        }
        let start_line = self.line;
        let rest = &self.text[self.pos..];
        let mut field = String::new();
        let mut quoted = false;
        let mut at_field_start = true;
        let mut chars = rest.char_indices().peekable();
        let mut consumed = rest.len();
        while let Some((i, c)) = chars.next() {
            match (c, quoted) {
                ('"', false) if at_field_start => {
                    quoted = true;
                    at_field_start = false;
                }
                ('"', true) if chars.peek().map(|p| p.1) == Some('"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', true) => quoted = false,
                (',', false) => {
                    out.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                ('\n', false) => {
                    self.line += 1;
                    consumed = i + 1;
                    break;
                }
                ('\r', false) if chars.peek().map(|p| p.1) == Some('\n') => {}
                (c, _) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        out.push(field);
        self.pos += consumed;
        Some((start_line, quoted))
    }
}

/// A time in a process log: what `parse_str` reads, and also single-digit months, days and
/// hours (`2011-11-05 1:05:01`), which some public logs hold and the reference tools read.
pub fn parse_log_time(text: &str) -> Option<i64> {
    parse_str(text).or_else(|| parse_str(&pad_log_time(text)?))
}

/// `2011-1-5 1:05:01` as `2011-01-05 01:05:01`; `None` when nothing needs padding.
fn pad_log_time(text: &str) -> Option<String> {
    let sep = text.find([' ', 'T', 't'])?;
    let (date, rest) = text.split_at(sep);
    let (time, tail) = rest[1..].split_at(rest[1..].find(':')?);
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    let short = |p: &str| p.len() == 1 && p.as_bytes()[0].is_ascii_digit();
    if parts.next().is_some() || !(short(m) || short(d) || short(time)) {
        return None;
    }
    let pad = |p: &str| {
        if short(p) {
            format!("0{p}")
        } else {
            p.to_string()
        }
    };
    Some(format!(
        "{y}-{}-{}{}{}{tail}",
        pad(m),
        pad(d),
        &rest[..1],
        pad(time)
    ))
}

/// Reads a CSV process log row by row: the header names the columns.
pub fn for_each_row(
    text: &str,
    cols: &CsvColumns,
    mut f: impl FnMut(Row<'_>),
) -> anyhow::Result<usize> {
    let mut records = Records::new(text.trim_start_matches('\u{feff}'));
    let mut names = Vec::new();
    if records.next_record(&mut names).is_none() {
        anyhow::bail!("the file is empty");
    }
    let find = |want: &str| {
        names.iter().position(|n| n.trim() == want).ok_or_else(|| {
            anyhow::anyhow!("no column `{want}` (the header has: {})", names.join(", "))
        })
    };
    let (ci, ai, ti) = (find(&cols.case)?, find(&cols.activity)?, find(&cols.time)?);
    let mut fields = Vec::new();
    let mut rows = 0;
    while let Some((line, open)) = records.next_record(&mut fields) {
        if open {
            anyhow::bail!("line {line}: a quoted field is never closed");
        }
        if fields.len() == 1 && fields[0].trim().is_empty() {
            continue;
        }
        let get = |i: usize| {
            fields
                .get(i)
                .map(String::as_str)
                .ok_or_else(|| anyhow::anyhow!("line {line}: too few fields"))
        };
        let (case, activity, t) = (get(ci)?, get(ai)?, get(ti)?);
        let time_ms = parse_log_time(t.trim())
            .ok_or_else(|| anyhow::anyhow!("line {line}: unreadable time `{t}`"))?;
        f(Row {
            case,
            activity,
            time_ms,
        });
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

    #[test]
    fn quoted_fields_may_span_lines() {
        let mut r = Records::new("a,\"one\ntwo\",b\r\nc,\"\"\"\",d\n\"open");
        let mut out = Vec::new();
        assert_eq!(r.next_record(&mut out), Some((1, false)));
        assert_eq!(out, ["a", "one\ntwo", "b"]);
        assert_eq!(r.next_record(&mut out), Some((3, false)));
        assert_eq!(out, ["c", "\"", "d"]);
        assert_eq!(r.next_record(&mut out), Some((4, true)));
        assert_eq!(r.next_record(&mut out), None);
    }

    #[test]
    fn log_times_may_have_single_digit_hours() {
        let t = |s| parse_log_time(s).map(crate::engine::time::format_rfc3339);
        assert_eq!(
            t("2011-11-05 1:05:01").as_deref(),
            Some("2011-11-05T01:05:01.000Z")
        );
        assert_eq!(
            t("2011-1-5T1:05:01Z").as_deref(),
            Some("2011-01-05T01:05:01.000Z")
        );
        assert_eq!(
            t("2011-11-05 11:05:01").as_deref(),
            Some("2011-11-05T11:05:01.000Z")
        );
        for bad in [
            "2011-11-05 :05:01",
            "2011-11-05 1",
            "1:05:01",
            "2011-11-05 x:05:01",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
