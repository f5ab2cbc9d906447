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

/// Where a CSV process log keeps what `eval` and `discover` read: columns by header name, and
/// the character between fields.
#[derive(Debug, Clone)]
pub struct CsvColumns {
    pub case: String,
    pub activity: String,
    /// One column with date and time, or several (date, then time) joined with a space, as
    /// tools export them (`Date,Time`).
    pub time: Vec<String>,
    pub delimiter: char,
}

impl Default for CsvColumns {
    fn default() -> CsvColumns {
        CsvColumns {
            case: "CaseID".into(),
            activity: "ActivityID".into(),
            time: vec!["CompleteTimestamp".into()],
            delimiter: ',',
        }
    }
}

/// A `--delimiter` as the user wrote it: one character, or `tab` / `\t`.
pub fn parse_delimiter(text: &str) -> anyhow::Result<char> {
    let mut chars = text.chars();
    match (text, chars.next(), chars.next()) {
        ("tab" | "\\t", _, _) => Ok('\t'),
        (_, Some(c), None) if c != '"' && c != '\n' && c != '\r' => Ok(c),
        _ => anyhow::bail!(
            "--delimiter `{text}`: one character other than a quote or a line end (or `tab`)"
        ),
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
    delimiter: char,
    pos: usize,
    /// The line the next record starts on (1-based), for messages.
    line: usize,
}

impl<'a> Records<'a> {
    pub fn new(text: &'a str) -> Records<'a> {
        Records::with_delimiter(text, ',')
    }

    /// Records whose fields are separated by `delimiter` (`;` and tabs are common in exports).
    pub fn with_delimiter(text: &'a str, delimiter: char) -> Records<'a> {
        Records {
            text,
            delimiter,
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
                (c, false) if c == self.delimiter => {
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

/// A time in a process log: what `parse_str` reads, and also what tools export: single-digit
/// months, days and hours (`2011-11-05 1:05:01`), slashes in the date (`2011/11/05`), no
/// seconds (`2011-11-05 01:05`), or a date alone (midnight).
pub fn parse_log_time(text: &str) -> Option<i64> {
    parse_str(text).or_else(|| parse_str(&normalize_log_time(text)?))
}

/// `2011/1/5 1:05` as `2011-01-05 01:05:00`; `None` when the text is not of that shape.
fn normalize_log_time(text: &str) -> Option<String> {
    let (date, sep, rest) = match text.find([' ', 'T', 't']) {
        Some(i) => (&text[..i], &text[i..i + 1], &text[i + 1..]),
        None => (text, " ", "00:00:00"),
    };
    let digits =
        |p: &str, max: usize| (1..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let pad = |p: &str| format!("{p:0>2}");
    let mut parts = date.split(['-', '/']);
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || !digits(y, 4) || !digits(m, 2) || !digits(d, 2) {
        return None;
    }
    // The clock is the leading run of digits and colons; a fraction or a zone may follow.
    let clock_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(rest.len());
    let (clock, tail) = rest.split_at(clock_len);
    let clock: Vec<&str> = clock.split(':').collect();
    if !(2..=3).contains(&clock.len()) || !clock.iter().all(|p| digits(p, 2)) {
        return None;
    }
    let sec = clock.get(2).map_or("00".to_string(), |s| pad(s));
    Some(format!(
        "{y}-{}-{}{sep}{}:{}:{sec}{tail}",
        pad(m),
        pad(d),
        pad(clock[0]),
        pad(clock[1]),
    ))
}

/// Reads a CSV process log row by row: the header names the columns.
pub fn for_each_row(
    text: &str,
    cols: &CsvColumns,
    mut f: impl FnMut(Row<'_>),
) -> anyhow::Result<usize> {
    let mut records = Records::with_delimiter(text.trim_start_matches('\u{feff}'), cols.delimiter);
    let mut names = Vec::new();
    if records.next_record(&mut names).is_none() {
        anyhow::bail!("the file is empty");
    }
    let find = |want: &str| {
        names.iter().position(|n| n.trim() == want).ok_or_else(|| {
            let mut msg = format!(
                "line 1: no column `{want}` (the header has: {})",
                names.join(", ")
            );
            // One column holding another common delimiter: say which option reads it.
            if names.len() == 1 {
                if let Some(d) = [';', '\t', ',', '|']
                    .into_iter()
                    .find(|d| names[0].contains(*d))
                {
                    let shown = if d == '\t' {
                        "tab".to_string()
                    } else {
                        format!("'{d}'")
                    };
                    msg.push_str(&format!(
                        "; the header looks separated by {shown}: try --delimiter {shown}"
                    ));
                }
            }
            anyhow::anyhow!(msg)
        })
    };
    let (ci, ai) = (find(&cols.case)?, find(&cols.activity)?);
    if cols.time.is_empty() {
        anyhow::bail!("no time column given");
    }
    let tis: Vec<usize> = cols
        .time
        .iter()
        .map(|t| find(t))
        .collect::<anyhow::Result<_>>()?;
    let mut fields = Vec::new();
    let mut time = String::new();
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
        let (case, activity) = (get(ci)?, get(ai)?);
        time.clear();
        for (k, &ti) in tis.iter().enumerate() {
            if k > 0 {
                time.push(' ');
            }
            time.push_str(get(ti)?.trim());
        }
        let time_ms = parse_log_time(&time)
            .ok_or_else(|| anyhow::anyhow!("line {line}: unreadable time `{time}`"))?;
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
#[derive(Debug, Clone, Default)]
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
        assert_eq!(
            t("2011/11/5 1:05").as_deref(),
            Some("2011-11-05T01:05:00.000Z")
        );
        assert_eq!(t("2011-11-05").as_deref(), Some("2011-11-05T00:00:00.000Z"));
        assert_eq!(
            t("2011-11-05 01:05:01.250+01:00").as_deref(),
            Some("2011-11-05T00:05:01.250Z")
        );
        for bad in [
            "05/11/2011 01:05",
            "2011-11-05 1:5:1:2",
            "2011-11-05 :05:01",
            "2011-11-05 1",
            "1:05:01",
            "2011-11-05 x:05:01",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
