//! Decoding one message: JSON, the oslo.messaging envelope, the timestamp and message id.
//! Every failure is a `DecodeError` the caller counts; nothing here panics on bad input.

use super::projection::Projection;
use serde_json::Value;

/// Messages larger than this are refused before parsing (oslo's own limit is far lower).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Cuts a byte stream into lines without ever holding more than `MAX_MESSAGE_BYTES` of one:
/// the reader (a file, stdin; IO is the caller's) hands it what it has buffered, and a line
/// that grows past the limit is dropped as it goes and reported with its length once it ends.
/// A 500 MB line costs the limit in memory, not 500 MB.
#[derive(Debug, Default)]
pub struct LineCutter {
    /// Bytes of the current line seen so far (also those dropped).
    len: usize,
}

/// What [`LineCutter::feed`] found at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// The line is in the caller's buffer (newline included).
    Line,
    /// The line was over the limit: this many bytes, none kept.
    TooLong(usize),
}

impl LineCutter {
    /// Takes bytes from `chunk` up to and including the first newline into `line` (unless the
    /// line is over the limit). Returns how many bytes were taken and, when a newline was among
    /// them, how the line ended. At the end of input, call [`finish`](Self::finish).
    pub fn feed(&mut self, chunk: &[u8], line: &mut Vec<u8>) -> (usize, Option<LineEnd>) {
        self.feed_at(chunk, line, 0)
    }

    /// `feed` into a buffer that holds other lines before `start` (kept when this line turns
    /// out to be over the limit).
    pub fn feed_at(
        &mut self,
        chunk: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> (usize, Option<LineEnd>) {
        let (part, ends) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..=i], true),
            None => (chunk, false),
        };
        self.len += part.len();
        if self.len > MAX_MESSAGE_BYTES + 2 {
            buf.truncate(start);
        } else {
            buf.extend_from_slice(part);
        }
        if !ends {
            return (part.len(), None);
        }
        (part.len(), Some(self.end()))
    }

    /// The end of input: how the last line (without a newline) ended, if there was one.
    pub fn finish(&mut self) -> Option<LineEnd> {
        (self.len > 0).then(|| self.end())
    }

    fn end(&mut self) -> LineEnd {
        let len = std::mem::take(&mut self.len);
        if len > MAX_MESSAGE_BYTES + 2 {
            LineEnd::TooLong(len)
        } else {
            LineEnd::Line
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("a message must be a JSON object, found {0}")]
    NotObject(&'static str),
    #[error("bad oslo envelope: {0}")]
    BadEnvelope(String),
    #[error("unreadable timestamp {0}")]
    BadTimestamp(String),
}

#[derive(Debug, Clone)]
pub struct Message {
    pub value: Value,
    /// Event time, ms since the epoch, if the message carries one.
    pub time_ms: Option<i64>,
    pub message_id: Option<String>,
}

impl Message {
    pub fn event_type(&self) -> Option<&str> {
        self.value.get("event_type").and_then(Value::as_str)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes a whole message.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_projected(bytes, &Projection::everything())
}

/// The UTF-8 byte order mark some Windows tools write at the start of a file or line.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The bytes without a leading byte order mark (and the whitespace after it). A mark anywhere
/// else is not skipped: it is not JSON.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    match bytes.strip_prefix(BOM) {
        Some(rest) => rest.trim_ascii_start(),
        None => bytes,
    }
}

/// Decodes a message keeping only the fields in `projection` (see `projection.rs`).
pub fn decode_projected(bytes: &[u8], projection: &Projection) -> Result<Message, DecodeError> {
    let bytes = strip_bom(bytes);
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let value = projection
        .parse(bytes)
        .map_err(|e| DecodeError::NotJson(e.to_string()))?;
    unwrap(value, projection)
}

/// Reads the timestamp and message id of an already parsed message, unwrapping an envelope.
pub fn from_value(value: Value) -> Result<Message, DecodeError> {
    unwrap(value, &Projection::everything())
}

fn unwrap(mut value: Value, projection: &Projection) -> Result<Message, DecodeError> {
    if !value.is_object() {
        return Err(DecodeError::NotObject(kind(&value)));
    }
    if let Some(inner) = value.get("oslo.message") {
        let Some(text) = inner.as_str() else {
            return Err(DecodeError::BadEnvelope(format!(
                "`oslo.message` is {}, not a string",
                kind(inner)
            )));
        };
        value = projection
            .parse_str(text)
            .map_err(|e| DecodeError::BadEnvelope(e.to_string()))?;
        if !value.is_object() {
            return Err(DecodeError::BadEnvelope(format!(
                "the inner message is {}",
                kind(&value)
            )));
        }
    }
    let time_ms = match value.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            super::time::parse_timestamp(t)
                .ok_or_else(|| DecodeError::BadTimestamp(t.to_string()))?,
        ),
    };
    let message_id = value
        .get("message_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Message {
        value,
        time_ms,
        message_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_oslo_envelopes() {
        let inner = r#"{"event_type": "a.b", "timestamp": "2012-03-26 00:00:00.123456", "message_id": "m1"}"#;
        let env = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner}).to_string();
        let m = decode(env.as_bytes()).unwrap();
        assert_eq!(m.event_type(), Some("a.b"));
        assert_eq!(m.message_id.as_deref(), Some("m1"));
        assert_eq!(m.time_ms, Some(1_332_720_000_123));
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert!(matches!(decode(b"{nope"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            decode(b"[1]"),
            Err(DecodeError::NotObject("an array"))
        ));
        assert!(matches!(
            decode(br#"{"oslo.message": 3}"#),
            Err(DecodeError::BadEnvelope(_))
        ));
        assert!(matches!(
            decode(br#"{"timestamp": "soon"}"#),
            Err(DecodeError::BadTimestamp(_))
        ));
        assert!(matches!(
            decode(b"{}\xEF\xBB\xBF"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(decode(b"\xEF\xBB\xBF {}").is_ok());
        assert!(matches!(
            decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
