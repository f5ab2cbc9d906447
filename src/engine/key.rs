//! Object keys, stored compactly: a UUID (what OpenStack uses) in 16 bytes, anything else as text.

use serde_json::Value;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl ObjectKey {
    /// A key from a message field: strings and numbers name objects; anything else does not.
    /// A number is named by its value, not its spelling: `1`, `1.0` and `1e0` are the object
    /// `1` (and so is the string `"1"`), `2.50` is `2.5`.
    pub fn from_value(v: &Value) -> Option<ObjectKey> {
        match v {
            Value::String(s) if !s.is_empty() => Some(ObjectKey::parse(s)),
            Value::Number(n) => Some(ObjectKey::Text(canonical_number(n).into())),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> ObjectKey {
        parse_uuid(s)
            .map(ObjectKey::Uuid)
            .unwrap_or_else(|| ObjectKey::Text(s.into()))
    }
}

/// The one spelling of a JSON number used as a key: integers (including a float with no
/// fraction that is exact in an f64) in decimal without a point, other numbers in Rust's
/// shortest round-trip form.
fn canonical_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    match n.as_f64() {
        // 2^53: beyond it an f64 no longer holds every integer, so it is not the same number.
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => (f as i64).to_string(),
        Some(f) => format!("{f:?}"),
        None => n.to_string(),
    }
}

/// Canonical lowercase hyphenated UUIDs only, so that the key prints back exactly as it came.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    // The 32 digits are every byte but the four dashes: a dash anywhere else is not a digit,
    // so the text is not a UUID (rather than shifting the pairs past the end).
    const DIGITS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [0u8; 16];
    for (byte, &i) in out.iter_mut().zip(&DIGITS) {
        *byte = hex(b[i])? << 4 | hex(b[i + 1])?;
    }
    Some(out)
}

/// A UUID's canonical text: lower-case hex, dashes after bytes 4, 6, 8 and 10.
fn uuid_text(u: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 15)];
        at += 2;
    }
    text
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl ObjectKey {
    /// A hash of the key's text (FNV-1a, 64 bits, then MurmurHash3's finaliser so that its low
    /// bits mix too), the same on every machine and in every version: what shards and
    /// partitions are chosen by. A UUID key hashes as its lower-case text.
    pub fn stable_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        match self {
            ObjectKey::Text(t) => feed(t.as_bytes()),
            ObjectKey::Uuid(u) => feed(&uuid_text(u)),
        }
        let mut x = h;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Text(t) => f.write_str(t),
            // One write of the 36 bytes (a formatted write per byte was 9% of a replay that
            // prints an outcome per object).
            ObjectKey::Uuid(u) => f.write_str(
                std::str::from_utf8(&uuid_text(u)).expect("hex digits and dashes are ASCII"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_hash_is_the_text_s_whatever_the_representation() {
        let u = ObjectKey::parse("6d1ee6a6-3f7c-4a6b-9c2e-0d7b8a1b2c3d");
        assert!(matches!(u, ObjectKey::Uuid(_)));
        let t = ObjectKey::Text("6d1ee6a6-3f7c-4a6b-9c2e-0d7b8a1b2c3d".into());
        assert_eq!(u.stable_hash(), t.stable_hash());
        // Saved partitions depend on it: a change of hash moves every object.
        assert_eq!(
            ObjectKey::Text("vm-1".into()).stable_hash(),
            0x132b_fdce_a625_3ebb
        );
    }

    #[test]
    fn uuids_round_trip_and_others_stay_text() {
        let s = "178b0921-8f85-4257-88b6-2e743b5a975c";
        let k = ObjectKey::parse(s);
        assert!(matches!(k, ObjectKey::Uuid(_)));
        assert_eq!(k.to_string(), s);
        let upper = ObjectKey::parse("178B0921-8F85-4257-88B6-2E743B5A975C");
        assert!(matches!(upper, ObjectKey::Text(_)));
        assert_eq!(ObjectKey::parse("req-1").to_string(), "req-1");
        assert_eq!(std::mem::size_of::<ObjectKey>(), 24);
    }

    #[test]
    fn numbers_are_keyed_by_value() {
        let key = |text: &str| {
            ObjectKey::from_value(&serde_json::from_str(text).unwrap())
                .unwrap()
                .to_string()
        };
        for (text, expect) in [
            ("1", "1"),
            ("1.0", "1"),
            ("1e0", "1"),
            ("-0.0", "0"),
            ("2.50", "2.5"),
            ("18446744073709551615", "18446744073709551615"),
            ("1e300", "1e300"),
            ("0.1", "0.1"),
        ] {
            assert_eq!(key(text), expect, "{text}");
        }
    }

    #[test]
    fn a_dash_out_of_place_is_text_not_a_panic() {
        // Found by the json fuzz target: 36 bytes with the four dashes in place and a fifth
        // one that shifted the hex pairs past the end.
        for s in [
            "178b0921-8f85-4257-88b6--e743b5a975c",
            "178b0921-8f85-4257-88b6-2e743b5a975-",
            "178b0921-8f85-4257-88b6-2e743b5a97-c",
            "-78b0921-8f85-4257-88b6-2e743b5a975c",
        ] {
            let k = ObjectKey::parse(s);
            assert!(matches!(k, ObjectKey::Text(_)), "{s}");
            assert_eq!(k.to_string(), s);
        }
    }
}
