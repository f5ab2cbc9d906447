//! Parsing: pest grammar (`grammar/flow.pest`) -> owned AST with spans.
//!
//! `pest::iterators::Pair` never leaves this file. The lowering trusts the grammar: a rule that
//! cannot appear where it is found is our bug (`unreachable!`), never the user's. User mistakes
//! that the grammar lets through on purpose (bad escapes, durations that overflow) become
//! diagnostics here; pest's own errors are rewritten in words a person understands.

use super::ast::*;
use crate::diagnostic::{Code, Diagnostic, FileId, Span};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/flow.pest"]
struct FlowParser;

/// Deepest nesting of `(`, `[` and `{` accepted. pest parses recursively; refusing deeper input
/// before parsing keeps a hostile or broken file from overflowing the stack.
pub const MAX_NESTING: usize = 64;

/// Largest `.flow` file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Parses one file. On failure returns every diagnostic found (the parser stops at the first
/// syntax error, since what follows it cannot be read reliably).
pub fn parse(file: FileId, text: &str) -> Result<File, Vec<Diagnostic>> {
    if let Some(d) = prescan(file, text) {
        return Err(vec![d]);
    }
    let mut pairs = match FlowParser::parse(Rule::file, text) {
        Ok(p) => p,
        Err(e) => return Err(vec![syntax_error(file, text, e)]),
    };
    let mut lower = Lower {
        file,
        diags: Vec::new(),
    };
    let root = pairs.next().expect("the file rule always yields one pair");
    let flows = root
        .into_inner()
        .filter(|p| p.as_rule() == Rule::flow)
        .map(|p| lower.flow(p))
        .collect();
    if lower.diags.is_empty() {
        Ok(File { flows })
    } else {
        Err(lower.diags)
    }
}

/// Parses a field path written on its own (`payload."nova_object.data".uuid`).
pub fn parse_path(text: &str) -> Result<Vec<Segment>, String> {
    if let Some(d) = prescan(0, text) {
        return Err(d.message);
    }
    let mut pairs =
        FlowParser::parse(Rule::path_only, text).map_err(|e| syntax_error(0, text, e).message)?;
    let root = pairs.next().expect("path_only yields one pair");
    let mut lower = Lower {
        file: 0,
        diags: Vec::new(),
    };
    let path = root
        .into_inner()
        .find(|p| p.as_rule() == Rule::path)
        .expect("a path");
    let p = lower.path(path);
    match lower.diags.first() {
        Some(d) => Err(d.message.clone()),
        None => Ok(p.segments),
    }
}

/// The positions and bytes of `text` outside strings and comments: what brackets are counted
/// on, so that a `(` inside a string or a comment does not count.
pub(super) fn structural_bytes(text: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let (at, b) = (i, bytes[i]);
            i += 1;
            match b {
                b'"' => {
                    while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if bytes.get(i) == Some(&b'/') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                _ => return Some((at, b)),
            }
        }
        None
    })
}

/// The byte ranges of the comments of `text` (`#` or `//` to the end of the line, outside
/// strings), in order: the formatter puts them back, since the AST does not hold them.
pub(super) fn structural_comments(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'#' | b'/' if bytes[i] == b'#' || bytes.get(i + 1) == Some(&b'/') => {
                let start = i;
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                out.push((start, i));
            }
            _ => i += 1,
        }
    }
    out
}

/// Refuses input the parser must not see: too deeply nested.
fn prescan(file: FileId, text: &str) -> Option<Diagnostic> {
    let mut depth = 0usize;
    for (i, b) in structural_bytes(text) {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(
                        Diagnostic::new(
                            Code::TooDeep,
                            Span::new(file, i, i + 1),
                            format!("nesting deeper than {MAX_NESTING} levels"),
                        )
                        .with_help("split the condition into several rules or simplify it"),
                    );
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// What a grammar rule is called in an error message, or `None` for rules a person never needs
/// to hear about.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::path_only => "a field path",
        Rule::flow | Rule::kw_flow => "`flow`",
        Rule::description | Rule::kw_description => "`description`",
        Rule::key_decl | Rule::kw_key => "`key`",
        Rule::match_decl | Rule::kw_match => "`match`",
        Rule::state_decl | Rule::state_kind => {
            "a state declaration (`initial`, `state`, `terminal`, `artifact`)"
        }
        Rule::kw_initial | Rule::kw_state | Rule::kw_terminal | Rule::kw_artifact => {
            "a state declaration (`initial`, `state`, `terminal`, `artifact`)"
        }
        Rule::on_rule | Rule::kw_on => "a rule (`on ... -> state`)",
        Rule::transitions | Rule::kw_transitions => "`transitions`",
        Rule::transition => "a transition (`from -> to count`)",
        Rule::unlisted | Rule::kw_unlisted => "`unlisted`",
        Rule::timeout | Rule::kw_timeout => "`timeout`",
        Rule::kw_after => "`after`",
        Rule::learn_block | Rule::kw_learn => "`learn`",
        Rule::alert_block | Rule::kw_alert => "`alert`",
        Rule::anomaly_block | Rule::kw_anomaly => "`anomaly`",
        Rule::anomaly_off => "`off`",
        Rule::artifact_alert | Rule::kw_for => "`for`",
        Rule::setting => "a setting",
        Rule::value => "a value",
        Rule::count => "a count",
        Rule::expr | Rule::or_expr | Rule::and_expr | Rule::unary => "a condition",
        Rule::not_op | Rule::kw_not => "`not`",
        Rule::kw_and => "`and`",
        Rule::kw_or => "`or`",
        Rule::event_glob => "an event type pattern",
        Rule::comparison => "a comparison",
        Rule::cmp | Rule::cmp_op => "an operator (`==`, `!=`, `<`, `<=`, `>`, `>=`)",
        Rule::in_list | Rule::kw_in => "`in`",
        Rule::exists_op | Rule::kw_exists => "`exists`",
        Rule::regex_op | Rule::regex_kind => "`=~`",
        Rule::glob_op | Rule::kw_glob => "`glob`",
        Rule::literal => "a value (string, number, true, false or null)",
        Rule::boolean | Rule::kw_true | Rule::kw_false => "`true` or `false`",
        Rule::null | Rule::kw_null => "`null`",
        Rule::path | Rule::path_head => "a field path",
        Rule::path_segment | Rule::name => "a field name",
        Rule::index => "an index",
        Rule::ident => "a name",
        Rule::duration => "a duration (like `90s` or `5m`)",
        Rule::number => "a number",
        Rule::string | Rule::string_raw => "a string",
        Rule::escape => "an escape",
        _ => return None,
    })
}

fn syntax_error(file: FileId, text: &str, err: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let found = describe_found(&text[pos..]);
    // An unterminated string is reported at its opening quote by pest only indirectly: say it.
    if text[pos..].starts_with('"')
        && !text[pos + 1..]
            .split('\n')
            .next()
            .unwrap_or("")
            .contains('"')
    {
        return Diagnostic::new(
            Code::Syntax,
            Span::new(file, pos, pos + 1),
            "unterminated string",
        )
        .with_help("close the string with `\"` on the same line");
    }
    if pos >= text.trim_end().len() {
        if let Some(open) = unclosed_brace(text) {
            return Diagnostic::new(
                Code::Syntax,
                Span::new(file, open, open + 1),
                "this `{` is never closed",
            )
            .with_help("add the missing `}` at the end of the block");
        }
    }
    let mut expected: Vec<&str> = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().filter_map(|r| rule_name(*r)).collect()
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    expected.retain(|e| seen.insert(*e));
    let message = match expected.len() {
        0 => format!("unexpected {found}"),
        // A long list helps nobody: this is the start of a flow item.
        n if n > 5 => format!("unexpected {found}: expected a flow item (`description`, `key`, `match`, `initial`, `state`, `terminal`, `artifact`, `on`, `transitions`, `unlisted`, `timeout`, `learn`, `alert`, `anomaly`) or `}}`"),
        1 => format!("expected {}, found {found}", expected[0]),
        _ => {
            let last = expected.pop().unwrap_or_default();
            format!("expected {} or {last}, found {found}", expected.join(", "))
        }
    };
    let word = found_word(&text[pos..]);
    let end = pos
        + if word.is_empty() {
            text[pos..].chars().next().map(char::len_utf8).unwrap_or(0)
        } else {
            word.len()
        };
    let mut d = Diagnostic::new(Code::Syntax, Span::new(file, pos, end), message);
    if found.starts_with("`=`") {
        d = d.with_help("comparisons use `==`");
    } else if found == "`&`" || found == "`|`" {
        d = d.with_help("conditions combine with `and`, `or` and `not`");
    } else if let Some(help) = spaced_duration(text, pos) {
        d = d.with_help(help);
    } else if text[pos..].starts_with("->") {
        if let Some(help) = unquoted_event_type(text, pos) {
            d = d.with_help(help);
        }
    } else if let Some((open, block)) = open_inner_block(text, pos, word) {
        d = d
            .with_label(
                Span::new(file, open, open + 1),
                format!("this `{block} {{` is still open"),
            )
            .with_help(format!("close `{block} {{` with `}}` before `{word}`"));
    } else if !word.is_empty() {
        // A misspelled keyword: `keys` for `key`, `flwo` for `flow`.
        let known: &[&str] = match open_braces(&text[..pos]).len() {
            0 => &["flow"],
            1 => ITEM_KEYWORDS,
            _ => &[],
        };
        if let Some(k) = crate::diagnostic::did_you_mean(word, known.iter().copied()) {
            d = d.with_help(format!("did you mean `{k}`?"));
        }
    }
    d
}

/// The words that start a flow item.
const ITEM_KEYWORDS: &[&str] = &[
    "description",
    "key",
    "match",
    "initial",
    "state",
    "terminal",
    "artifact",
    "on",
    "transitions",
    "unlisted",
    "timeout",
    "learn",
    "alert",
    "anomaly",
];

/// The word (letters, digits, `_`) at the start of `rest`, or "".
fn found_word(rest: &str) -> &str {
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The byte position just after the last character of `s` that `pred` holds for, or 0: where
/// the word at the end of `s` starts (a character boundary even after a multi-byte one).
fn after_last(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .rev()
        .find(|(_, c)| pred(*c))
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// `30 min` near the error: the duration it should have been (`30m`), as help.
fn spaced_duration(text: &str, pos: usize) -> Option<String> {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    let line = &text[line_start..line_end];
    let bytes = line.as_bytes();
    let at = pos - line_start;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit()
            || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &line[start..i];
        let gap_end = i + line[i..].len() - line[i..].trim_start_matches([' ', '\t']).len();
        if gap_end == i {
            continue;
        }
        let unit_word = found_word(&line[gap_end..]);
        let unit = match unit_word.to_ascii_lowercase().as_str() {
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => "ms",
            "s" | "sec" | "secs" | "second" | "seconds" => "s",
            "m" | "min" | "mins" | "minute" | "minutes" => "m",
            "h" | "hr" | "hrs" | "hour" | "hours" => "h",
            "d" | "day" | "days" => "d",
            "w" | "wk" | "wks" | "week" | "weeks" => "w",
            _ => continue,
        };
        let end = gap_end + unit_word.len();
        let after = end + line[end..].len() - line[end..].trim_start().len();
        // The error is on the number, the unit, or just after them.
        if start <= at && at <= after {
            return Some(format!(
                "write a duration without a space: `{digits}{unit}`"
            ));
        }
        i = end;
    }
    None
}

/// `on instance.resize.start -> s`: the path before the arrow was meant as an event type.
fn unquoted_event_type(text: &str, pos: usize) -> Option<String> {
    let before = text[..pos].trim_end();
    let start = after_last(before, |c| {
        !(c.is_alphanumeric() || matches!(c, '_' | '.' | '*' | '?' | '-'))
    });
    let word = &before[start..];
    let head = before[..start].trim_end();
    // The word before the path is `on` itself, not a word ending in it (`region`).
    let after_on = head
        .strip_suffix("on")
        .is_some_and(|h| !h.ends_with(|c: char| c.is_alphanumeric() || c == '_'));
    if word.is_empty() || !after_on {
        return None;
    }
    Some(format!(
        "an event type is matched by a string: `on \"{word}\" -> ...`"
    ))
}

/// When the error is a flow item keyword inside a block other than the flow's own (an
/// unclosed `transitions {`): where that block opens and its keyword.
fn open_inner_block<'t>(text: &'t str, pos: usize, word: &str) -> Option<(usize, &'t str)> {
    if !ITEM_KEYWORDS.contains(&word) {
        return None;
    }
    let open = open_braces(&text[..pos]);
    if open.len() < 2 {
        return None;
    }
    let at = *open.last()?;
    let head = text[..at].trim_end();
    let kw_start = after_last(head, |c| !(c.is_alphanumeric() || c == '_'));
    let mut block = &head[kw_start..];
    // `for artifact {` inside `alert`: name the `for`.
    if !ITEM_KEYWORDS.contains(&block) {
        let before = head[..kw_start].trim_end();
        if before.ends_with("for") {
            block = "for";
        }
    }
    Some((at, block))
}

/// The position of the last `{` that is never closed.
fn unclosed_brace(text: &str) -> Option<usize> {
    open_braces(text).pop()
}

/// The positions of the `{` still open at the end of `text`, outermost first.
fn open_braces(text: &str) -> Vec<usize> {
    let mut open = Vec::new();
    for (i, b) in structural_bytes(text) {
        match b {
            b'{' => open.push(i),
            b'}' => {
                open.pop();
            }
            _ => {}
        }
    }
    open
}

/// How the text at an error position reads in a message: a word, a symbol, or end of file.
fn describe_found(rest: &str) -> String {
    let Some(c) = rest.chars().next() else {
        return "end of file".into();
    };
    if c.is_alphanumeric() || c == '_' {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
            .take(40)
            .collect();
        format!("`{word}`")
    } else if c == '\n' || c == '\r' {
        "end of line".into()
    } else {
        format!("`{c}`")
    }
}

struct Lower {
    file: FileId,
    diags: Vec<Diagnostic>,
}

impl Lower {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn flow(&mut self, p: Pair<Rule>) -> Flow {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        inner.next(); // `flow`
        let name = self.ident(inner.next().expect("flow name"));
        let mut item_spans = Vec::new();
        let items = inner
            .map(|i| {
                item_spans.push(self.span(&i));
                self.item(i)
            })
            .collect();
        Flow {
            name,
            span,
            items,
            item_spans,
        }
    }

    fn item(&mut self, p: Pair<Rule>) -> Item {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut inner = p.into_inner().filter(|p| !is_keyword(p.as_rule()));
        match rule {
            Rule::description => Item::Description(self.string(inner.next().expect("string"))),
            Rule::key_decl => Item::Key {
                paths: inner.map(|p| self.path(p)).collect(),
                span,
            },
            Rule::match_decl => Item::Match(self.expr(inner.next().expect("expr"))),
            Rule::state_decl => {
                let kind_pair = inner.next().expect("state kind");
                let kind = match kind_pair.as_str() {
                    "initial" => StateKind::Initial,
                    "state" => StateKind::Ordinary,
                    "terminal" => StateKind::Terminal,
                    "artifact" => StateKind::Artifact,
                    other => unreachable!("state kind {other}"),
                };
                Item::States(
                    inner
                        .map(|item| {
                            let mut parts = item.into_inner();
                            let name = self.ident(parts.next().expect("state name"));
                            let label = parts.next().map(|s| self.string(s));
                            StateDecl { kind, name, label }
                        })
                        .collect(),
                )
            }
            Rule::on_rule => {
                let cond = self.expr(inner.next().expect("condition"));
                let target = self.ident(inner.next().expect("target"));
                Item::Rule { cond, target, span }
            }
            Rule::transitions => Item::Transitions(
                inner
                    .map(|t| {
                        let span = self.span(&t);
                        let mut parts = t.into_inner();
                        let from = self.ident(parts.next().expect("from"));
                        let to = self.ident(parts.next().expect("to"));
                        let count = self.value(parts.next().expect("count"));
                        Transition {
                            from,
                            to,
                            count,
                            span,
                        }
                    })
                    .collect(),
            ),
            Rule::unlisted => Item::Unlisted(self.ident(inner.next().expect("policy"))),
            Rule::timeout => {
                let state = self.ident(inner.next().expect("state"));
                let after = self.value(inner.next().expect("duration"));
                let artifact = self.ident(inner.next().expect("artifact"));
                Item::Timeout {
                    state,
                    after,
                    artifact,
                    span,
                }
            }
            Rule::learn_block => Item::Learn {
                settings: inner.map(|s| self.setting(s)).collect(),
                span,
            },
            Rule::anomaly_block => {
                let mut off = false;
                let mut settings = Vec::new();
                for p in inner {
                    match p.as_rule() {
                        Rule::anomaly_off => off = true,
                        Rule::setting => settings.push(self.setting(p)),
                        r => unreachable!("anomaly item {r:?}"),
                    }
                }
                Item::Anomaly {
                    off,
                    settings,
                    span,
                }
            }
            Rule::alert_block => {
                let mut settings = Vec::new();
                let mut per_artifact = Vec::new();
                for p in inner {
                    match p.as_rule() {
                        Rule::setting => settings.push(self.setting(p)),
                        Rule::artifact_alert => {
                            let mut parts = p.into_inner().filter(|p| !is_keyword(p.as_rule()));
                            let name = self.ident(parts.next().expect("artifact"));
                            let s = parts.map(|s| self.setting(s)).collect();
                            per_artifact.push((name, s));
                        }
                        r => unreachable!("alert item {r:?}"),
                    }
                }
                Item::Alert {
                    settings,
                    per_artifact,
                    span,
                }
            }
            r => unreachable!("flow item {r:?}"),
        }
    }

    fn setting(&mut self, p: Pair<Rule>) -> Setting {
        let mut parts = p.into_inner();
        let name = self.ident(parts.next().expect("setting name"));
        let value = self.value(parts.next().expect("setting value"));
        Setting { name, value }
    }

    /// `value` and `count` wrap one atom; `duration` may also appear bare (timeouts).
    fn value(&mut self, p: Pair<Rule>) -> Value {
        let p = match p.as_rule() {
            Rule::value | Rule::count => p.into_inner().next().expect("atom"),
            _ => p,
        };
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::duration => ValueKind::Duration(self.duration(&p)),
            Rule::number => ValueKind::Number(self.number(&p)),
            Rule::string => ValueKind::Str(self.string(p).value),
            Rule::boolean => ValueKind::Bool(p.as_str() == "true"),
            Rule::null => ValueKind::Null,
            Rule::ident => ValueKind::Ident(p.as_str().to_string()),
            r => unreachable!("value {r:?}"),
        };
        Value { kind, span }
    }

    fn duration(&mut self, p: &Pair<Rule>) -> i64 {
        match parse_duration_ms(p.as_str()) {
            Some(ms) => ms,
            None => {
                self.diags.push(
                    Diagnostic::new(Code::BadDuration, self.span(p), "duration is too large")
                        .with_help("durations go up to about 290 million years; use a smaller one"),
                );
                0
            }
        }
    }

    fn number(&mut self, p: &Pair<Rule>) -> f64 {
        // The grammar admits only valid float syntax, so this parse cannot fail; an overflow
        // gives infinity, which the model rejects wherever a finite number is needed.
        p.as_str().parse::<f64>().unwrap_or(f64::INFINITY)
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn string(&mut self, p: Pair<Rule>) -> StrLit {
        let span = self.span(&p);
        let raw = p.into_inner().next().expect("string body");
        let base = raw.as_span().start();
        let mut value = String::with_capacity(raw.as_str().len());
        let mut chars = raw.as_str().char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                '0' => value.push('\0'),
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                'u' => {
                    // \u{1F600}
                    let rest = &raw.as_str()[i + 2..];
                    let parsed = rest
                        .strip_prefix('{')
                        .and_then(|r| r.split_once('}'))
                        .and_then(|(hex, _)| {
                            u32::from_str_radix(hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .map(|ch| (ch, hex.len() + 2))
                        });
                    match parsed {
                        Some((ch, used)) => {
                            value.push(ch);
                            for _ in 0..used {
                                chars.next();
                            }
                        }
                        None => self.diags.push(
                            Diagnostic::new(
                                Code::BadEscape,
                                Span::new(self.file, base + i, base + i + 2),
                                "invalid unicode escape",
                            )
                            .with_help("write a code point as `\\u{1F600}`"),
                        ),
                    }
                }
                other => self.diags.push(
                    Diagnostic::new(
                        Code::BadEscape,
                        Span::new(self.file, base + i, base + i + 1 + other.len_utf8()),
                        format!("unknown escape `\\{other}`"),
                    )
                    .with_help(r#"the escapes are \" \\ \n \t \r \0 and \u{...}; regex backslashes need doubling: "\\d+""#),
                ),
            }
        }
        StrLit { value, span }
    }

    fn path(&mut self, p: Pair<Rule>) -> Path {
        let span = self.span(&p);
        let mut segments = Vec::new();
        for seg in p.into_inner() {
            match seg.as_rule() {
                Rule::path_head | Rule::path_segment => {
                    let atom = seg.into_inner().next().expect("segment");
                    match atom.as_rule() {
                        Rule::string => segments.push(Segment::Field(self.string(atom).value)),
                        _ => segments.push(Segment::Field(atom.as_str().to_string())),
                    }
                }
                Rule::index => {
                    let digits = seg.as_str().trim_matches(|c| c == '[' || c == ']');
                    match digits.parse::<usize>() {
                        Ok(n) => segments.push(Segment::Index(n)),
                        Err(_) => self.diags.push(Diagnostic::new(
                            Code::Syntax,
                            self.span(&seg),
                            "index is too large",
                        )),
                    }
                }
                r => unreachable!("path part {r:?}"),
            }
        }
        Path { segments, span }
    }

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => self.expr(p.into_inner().next().expect("or_expr")),
            Rule::or_expr | Rule::and_expr => {
                let is_or = p.as_rule() == Rule::or_expr;
                let mut parts: Vec<Expr> = p
                    .into_inner()
                    .filter(|p| !is_keyword(p.as_rule()))
                    .map(|p| self.expr(p))
                    .collect();
                if parts.len() == 1 {
                    parts.pop().expect("one part")
                } else if is_or {
                    Expr::Or(parts, span)
                } else {
                    Expr::And(parts, span)
                }
            }
            Rule::unary => {
                let mut nots = Vec::new();
                let mut inner = None;
                for part in p.into_inner() {
                    if part.as_rule() == Rule::not_op {
                        nots.push(self.span(&part));
                    } else {
                        inner = Some(self.expr(part));
                    }
                }
                let e = inner.expect("unary operand");
                // `not not x` is `x`: only the parity matters, and folding it keeps a long
                // run of `not`s from building a tree deep enough to overflow the stack.
                match nots.first() {
                    Some(first) if nots.len() % 2 == 1 => {
                        let s = Span {
                            end: e.span().end,
                            ..*first
                        };
                        Expr::Not(Box::new(e), s)
                    }
                    _ => e,
                }
            }
            Rule::event_glob => {
                Expr::EventGlob(self.string(p.into_inner().next().expect("string")))
            }
            Rule::comparison => {
                let mut parts = p.into_inner();
                let path = self.path(parts.next().expect("path"));
                let op = parts.next().expect("operator");
                let negated = op.clone().into_inner().any(|p| p.as_rule() == Rule::kw_not);
                match op.as_rule() {
                    Rule::cmp => {
                        let mut c = op.into_inner();
                        let op = match c.next().expect("cmp op").as_str() {
                            "==" => CmpOp::Eq,
                            "!=" => CmpOp::Ne,
                            "<" => CmpOp::Lt,
                            "<=" => CmpOp::Le,
                            ">" => CmpOp::Gt,
                            ">=" => CmpOp::Ge,
                            o => unreachable!("cmp op {o}"),
                        };
                        let value = self.literal(c.next().expect("literal"));
                        Expr::Cmp {
                            path,
                            op,
                            value,
                            span,
                        }
                    }
                    Rule::in_list => {
                        let list = op
                            .into_inner()
                            .filter(|p| p.as_rule() == Rule::literal)
                            .map(|l| self.literal(l))
                            .collect();
                        Expr::In {
                            path,
                            negated,
                            list,
                            span,
                        }
                    }
                    Rule::exists_op => Expr::Exists {
                        path,
                        negated,
                        span,
                    },
                    Rule::regex_op => {
                        let mut c = op.into_inner();
                        let negated = c.next().expect("regex kind").as_str() == "!~";
                        let pattern = self.string(c.next().expect("pattern"));
                        Expr::Regex {
                            path,
                            negated,
                            pattern,
                            span,
                        }
                    }
                    Rule::glob_op => {
                        let s = op
                            .into_inner()
                            .find(|p| p.as_rule() == Rule::string)
                            .expect("glob pattern");
                        let pattern = self.string(s);
                        Expr::Glob {
                            path,
                            negated,
                            pattern,
                            span,
                        }
                    }
                    r => unreachable!("comparison {r:?}"),
                }
            }
            r => unreachable!("expression {r:?}"),
        }
    }

    fn literal(&mut self, p: Pair<Rule>) -> Literal {
        let atom = p.into_inner().next().expect("literal atom");
        match atom.as_rule() {
            Rule::string => Literal::Str(self.string(atom).value),
            Rule::number => Literal::Num(self.number(&atom)),
            Rule::boolean => Literal::Bool(atom.as_str() == "true"),
            Rule::null => Literal::Null,
            r => unreachable!("literal {r:?}"),
        }
    }
}

fn is_keyword(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::kw_flow
            | Rule::kw_description
            | Rule::kw_key
            | Rule::kw_match
            | Rule::kw_on
            | Rule::kw_transitions
            | Rule::kw_unlisted
            | Rule::kw_timeout
            | Rule::kw_after
            | Rule::kw_learn
            | Rule::kw_alert
            | Rule::kw_anomaly
            | Rule::kw_for
            | Rule::kw_and
            | Rule::kw_or
    )
}

/// `"1h30m"` -> 5_400_000; negative durations keep their sign. `None` on overflow.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let (neg, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            let ms = match rest.chars().next()? {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 604_800_000,
                _ => return None,
            };
            (ms, 1)
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
    }
    Some(if neg { -total } else { total })
}

/// Formats milliseconds the way the language writes them: `5m`, `1h30m`, `250ms`.
pub fn format_duration_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms.unsigned_abs();
    if ms < 0 {
        out.push('-');
    }
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match parse(0, input) {
            Ok(f) => format!(
                "{:?}",
                f.flows.iter().map(|f| &f.name.name).collect::<Vec<_>>()
            ),
            Err(d) => d
                .iter()
                .map(|d| format!("{} {}", d.code.as_str(), d.message))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        assert_eq!(got, expect, "input: {input}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("7d"), Some(604_800_000));
        assert_eq!(parse_duration_ms("-5m"), Some(-300_000));
        assert_eq!(parse_duration_ms("99999999999999999999d"), None);
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(250), "250ms");
    }

    #[test]
    fn minimal_and_errors() {
        check("", "[]");
        check("flow a { initial s }", "[\"a\"]");
        check("flow a { initial s } flow b {}", "[\"a\", \"b\"]");
        check("flow a { initial s", "F001 this `{` is never closed");
        check(
            "flow a { initial s } }",
            "F001 expected end of file or `flow`, found `}`",
        );
        check("flow a { initial s = }", "F001 unexpected `=`: expected a flow item (`description`, `key`, `match`, `initial`, `state`, `terminal`, `artifact`, `on`, `transitions`, `unlisted`, `timeout`, `learn`, `alert`, `anomaly`) or `}`");
        check("flow a { on x = 1 -> s }", "F001 expected an operator (`==`, `!=`, `<`, `<=`, `>`, `>=`), `in`, `exists`, `=~` or `glob`, found `=`");
        check("flow a { description \"x }", "F001 unterminated string");
        check(
            "flow a { description \"\\q\" }",
            "F004 unknown escape `\\q`",
        );
        check(
            &format!(
                "flow a {{ on {}x == 1{} -> s }}",
                "(".repeat(10_000),
                ")".repeat(10_000)
            ),
            "F003 nesting deeper than 64 levels",
        );
    }

    #[test]
    fn expressions_lower_with_precedence() {
        let f = parse(
            0,
            r#"flow a { on "x.*" and not payload."a.b"[0] == 1 or p in [1, "z", null] -> s }"#,
        )
        .unwrap();
        let Item::Rule { cond, .. } = &f.flows[0].items[0] else {
            panic!()
        };
        let Expr::Or(parts, _) = cond else {
            panic!("{cond:?}")
        };
        assert!(matches!(&parts[0], Expr::And(a, _) if matches!(&a[1], Expr::Not(..))));
        let Expr::And(a, _) = &parts[0] else { panic!() };
        let Expr::Not(inner, _) = &a[1] else { panic!() };
        let Expr::Cmp { path, .. } = &**inner else {
            panic!()
        };
        assert_eq!(path.to_string(), "payload.\"a.b\"[0]");
        assert!(matches!(&parts[1], Expr::In { list, .. } if list.len() == 3));
    }

    #[test]
    fn keywords_are_names_after_a_dot() {
        check(
            r#"flow a { on payload.state == "x" and payload.not exists -> s }"#,
            "[\"a\"]",
        );
    }
}
