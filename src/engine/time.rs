//! Timestamps: parsing the forms notifications carry, and formatting RFC 3339. The engine counts
//! time in milliseconds since the Unix epoch (UTC); it has no clock of its own.

/// Parses `2012-03-26 00:00:00.123456` (oslo, UTC), RFC 3339 (`2012-03-26T00:00:00Z`,
/// `...+02:00`), or a number of seconds since the epoch. `None` when it is none of these, or a
/// time before 1970 or after 9999.
/// The times the engine accepts: 1970-01-01 to 9999-12-31 (UTC). Anything else is not a time a
/// notification can carry, and would only overflow the arithmetic on times.
pub const MAX_MS: i64 = 253_402_300_799_999;

fn plausible(ms: i64) -> Option<i64> {
    (0..=MAX_MS).contains(&ms).then_some(ms)
}

pub fn parse_timestamp(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => parse_str(s),
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .and_then(|x| plausible((x * 1000.0) as i64)),
        _ => None,
    }
}

pub fn parse_str(s: &str) -> Option<i64> {
    parse_str_any(s).and_then(plausible)
}

fn parse_str_any(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    // Digits only (no sign, no space): the value of the bytes in `r`.
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |a, &c| {
            c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0'))
        })
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo)
        || !(1..=days_in_month(y, mo)).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // The first three digits, padded with zeros: milliseconds.
        for k in 0..3 {
            let digit = if start + k < i {
                b[start + k] - b'0'
            } else {
                0
            };
            ms = ms * 10 + i64::from(digit);
        }
    }
    let offset_min = match b.get(i) {
        None => 0,
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

/// The days of a month of the proleptic Gregorian calendar: `2020-02-31` is no date.
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2012-03-26T00:00:00.123Z`
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_notifications_carry() {
        let base = parse_str("2012-03-26 00:00:00.123456").unwrap();
        assert_eq!(format_rfc3339(base), "2012-03-26T00:00:00.123Z");
        assert_eq!(parse_str("2012-03-26T00:00:00.123Z"), Some(base));
        assert_eq!(parse_str("2012-03-26T02:00:00.123+02:00"), Some(base));
        assert_eq!(parse_str("2014-10-01 12:00:00"), Some(1_412_164_800_000));
        assert_eq!(parse_str("1970-01-01T00:00:00Z"), Some(0));
        assert!(parse_str("2020-02-29 00:00:00").is_some());
        assert!(parse_str("2000-02-29 00:00:00").is_some());
        assert!(parse_str("2012-03-26T00:00:00+23:59").is_some());
        for bad in [
            "",
            "yesterday",
            "2012-13-01 00:00:00",
            "2012-03-26 00:00:00.",
            "2012-03-26 00:00:00+2",
            "2020-02-31 00:00:00",
            "2019-02-29 00:00:00",
            "2021-04-31T00:00:00Z",
            "2012-03-26T00:00:00+99:99",
            "2012-03-26T00:00:00+24:00",
            "2012-03-26T00:00:00-01:60",
        ] {
            assert_eq!(parse_str(bad), None, "{bad}");
        }
    }
}
