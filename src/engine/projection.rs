//! Decoding only what the flows read. A notification is 1-3 KB of JSON of which the rules look
//! at a handful of fields; building a full `serde_json::Value` spends most of the time
//! allocating strings nobody reads. A `Projection` is the tree of paths the compiled flows use
//! (keys, filters, rule conditions, plus the envelope fields); decoding through it skips every
//! other subtree without allocating. The result is a `Value` with only those fields, on which
//! conditions evaluate exactly as on the whole message (a skipped field is one no flow reads).

use crate::model::cond::{Cond, FieldPath};
use crate::model::CompiledFlow;
use crate::syntax::ast::Segment;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, Default)]
pub struct Projection {
    /// Keep this whole subtree.
    all: bool,
    /// The fields kept here, by name: a handful per level, so a scan that compares lengths
    /// first costs less than hashing every key of a 2 KB message (1% of a nova replay's
    /// instructions, callgrind).
    fields: Vec<(Box<str>, Projection)>,
    /// What to keep of every element of an array here.
    items: Option<Box<Projection>>,
}

impl Projection {
    /// Everything: the projection of no projection.
    pub fn everything() -> Projection {
        Projection {
            all: true,
            ..Projection::default()
        }
    }

    /// The fields every message needs (envelope, time, id, event type) and those `flows` read.
    pub fn for_flows<'a>(flows: impl IntoIterator<Item = &'a CompiledFlow>) -> Projection {
        let mut p = Projection::default();
        for f in ["event_type", "timestamp", "message_id", "oslo.message"] {
            p.add(&[Segment::Field(f.into())]);
        }
        for flow in flows {
            for k in &flow.keys {
                p.add_path(k);
            }
            if let Some(c) = &flow.filter {
                p.add_cond(c);
            }
            for r in &flow.rules {
                p.add_cond(&r.cond);
            }
        }
        p
    }

    fn add_path(&mut self, path: &FieldPath) {
        self.add(&path.segments);
    }

    fn add(&mut self, segments: &[Segment]) {
        if self.all {
            return;
        }
        let Some((first, rest)) = segments.split_first() else {
            // The path ends here: keep the whole value (a comparison may read any of it).
            *self = Projection::everything();
            return;
        };
        let child = match first {
            Segment::Field(name) => match self.fields.iter().position(|(k, _)| **k == **name) {
                Some(i) => &mut self.fields[i].1,
                None => {
                    self.fields
                        .push((name.as_str().into(), Projection::default()));
                    &mut self.fields.last_mut().expect("pushed").1
                }
            },
            Segment::Index(_) => self.items.get_or_insert_with(Default::default),
        };
        child.add(rest);
    }

    fn add_cond(&mut self, c: &Cond) {
        match c {
            Cond::And(parts) | Cond::Or(parts) => parts.iter().for_each(|p| self.add_cond(p)),
            Cond::Not(inner) => self.add_cond(inner),
            Cond::Cmp(p, ..)
            | Cond::In(p, _)
            | Cond::Exists(p)
            | Cond::Regex(p, _)
            | Cond::Glob(p, _) => self.add_path(p),
        }
    }

    /// Parses `bytes` keeping only the projected fields.
    pub fn parse(&self, bytes: &[u8]) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = self.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }

    pub fn parse_str(&self, text: &str) -> serde_json::Result<Value> {
        self.parse(text.as_bytes())
    }
}

impl<'de> DeserializeSeed<'de> for &Projection {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.all {
            return Value::deserialize(d);
        }
        d.deserialize_any(ProjVisitor(self))
    }
}

use serde::Deserialize;

struct ProjVisitor<'p>(&'p Projection);

/// A map key, looked up without allocating when the key is borrowed from the input.
struct KeySeed<'p>(&'p Projection);

impl<'de, 'p> DeserializeSeed<'de> for KeySeed<'p> {
    type Value = Option<(Box<str>, &'p Projection)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for KeySeed<'p> {
    type Value = Option<(Box<str>, &'p Projection)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .fields
            .iter()
            .find(|(k, _)| k.len() == v.len() && **k == *v)
            .map(|(k, p)| (k.clone(), p)))
    }
}

impl<'de> Visitor<'de> for ProjVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(hit) = map.next_key_seed(KeySeed(self.0))? {
            match hit {
                Some((k, sub)) => {
                    let v = map.next_value_seed(sub)?;
                    out.insert(k.into(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        match &self.0.items {
            Some(items) => {
                while let Some(v) = seq.next_element_seed(&**items)? {
                    out.push(v);
                }
            }
            None => while seq.next_element::<IgnoredAny>()?.is_some() {},
        }
        Ok(Value::Array(out))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_the_flows_read_and_agrees_with_a_full_parse() {
        let flows = crate::model::compile_files([(
            "t.flow".to_string(),
            br#"flow f { key payload."nova_object.data".uuid  initial s
                 on "a" and payload.list[0].x == 1 and payload.obj exists -> s }"#
                .to_vec(),
        )])
        .flows;
        let p = Projection::for_flows(&flows);
        let text = r#"{"event_type": "a", "junk": {"big": [1, 2, {"x": "y"}]}, "timestamp": 5,
            "payload": {"nova_object.data": {"uuid": "u", "other": "z"}, "list": [{"x": 1, "y": 2}],
                        "obj": {"deep": [1]}}}"#;
        let v = p.parse_str(text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event_type": "a", "timestamp": 5,
                "payload": {"nova_object.data": {"uuid": "u"}, "list": [{"x": 1}], "obj": {"deep": [1]}}})
        );
        let full: Value = serde_json::from_str(text).unwrap();
        for r in &flows[0].rules {
            assert_eq!(r.cond.eval(&v), r.cond.eval(&full));
        }
        assert!(p.parse_str("{\"a\": 1} trailing").is_err());
        // Keys: a raw control character or bytes that are not UTF-8 are errors, an escaped key
        // is unescaped before it matches.
        assert!(p.parse(b"{\"a\x01\": 1}").is_err());
        assert!(p.parse(b"{\"a\xff\": 1}").is_err());
        assert!(p.parse(b"{\"\\u00e9\\u0001\": 1, \"\xc3\xa9\": 2}").is_ok());
        assert_eq!(
            p.parse_str(r#"{"event_\u0074ype": "b"}"#).unwrap(),
            serde_json::json!({"event_type": "b"})
        );
        assert!(p.parse_str("{\"a\": ").is_err());
    }
}
