//! `flowcast fmt`: one canonical layout for `.flow` files, comments kept.
//!
//! The layout: four spaces per level, one item per line in the order written, one blank line
//! where the author left one or more (none after `{` or before `}`), one blank line between
//! flows. Runs of like lines (state declarations, rules, transitions, settings) with nothing
//! between them are aligned in columns, as gofmt aligns; numbers, durations and strings are
//! written in one spelling each (`0.30` -> `0.3`, `90s` -> `1m30s`). A long `in [...]` list
//! wraps under its first element.
//!
//! Comments are not in the AST; they are found in the text and placed by position: a comment on
//! the line where an item ends stays at the end of that line, any other goes on its own line
//! before the next item (a comment inside an expression moves before its item). No comment is
//! ever dropped, and formatting formatted text changes nothing.

use super::ast::*;
use super::parser::{format_duration_ms, parse, structural_comments};
use crate::diagnostic::Diagnostic;

/// Lines longer than this wrap an `in [...]` list.
const MAX_WIDTH: usize = 100;

const INDENT: &str = "    ";

/// Formats a whole file; the diagnostics when it does not parse.
pub fn format(text: &str) -> Result<String, Vec<Diagnostic>> {
    let file = parse(0, text)?;
    let mut f = Formatter {
        text,
        comments: structural_comments(text),
        next: 0,
        last_end: 0,
    };
    let mut lines = Vec::new();
    for flow in &file.flows {
        f.leading(flow.span.start as usize, &mut lines);
        // Flows are one blank line apart; a comment before a flow keeps the author's spacing.
        if matches!(lines.last(), Some(Line::Block { .. })) {
            lines.push(Line::Blank);
        }
        f.inside(flow.name.span.start as usize, &mut lines);
        let body = f.flow_body(flow);
        lines.push(Line::Block {
            head: format!("flow {}", flow.name.name),
            body,
            trailing: None,
        });
        f.last_end = flow.span.end as usize;
    }
    f.leading(text.len(), &mut lines);
    while matches!(lines.last(), Some(Line::Blank)) {
        lines.pop();
    }
    let mut out = String::new();
    render(&lines, 0, &mut out);
    Ok(out)
}

/// Columns a run of rows is aligned in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    State,
    Rule,
    Transition,
    Setting,
}

#[derive(Debug)]
enum Line {
    Blank,
    Comment(String),
    /// One line of cells, aligned with the rows of the same class around it.
    Row {
        class: Class,
        cells: Vec<String>,
        trailing: Option<String>,
    },
    /// Text at the current indentation; continuation lines carry their own indentation.
    Text {
        text: String,
        trailing: Option<String>,
    },
    Block {
        head: String,
        body: Vec<Line>,
        trailing: Option<String>,
    },
}

impl Line {
    fn trailing_mut(&mut self) -> Option<&mut Option<String>> {
        match self {
            Line::Row { trailing, .. }
            | Line::Text { trailing, .. }
            | Line::Block { trailing, .. } => Some(trailing),
            Line::Blank | Line::Comment(_) => None,
        }
    }
}

struct Formatter<'t> {
    text: &'t str,
    /// Every comment's byte range, in order.
    comments: Vec<(usize, usize)>,
    /// The first comment not yet placed.
    next: usize,
    /// Where the last placed item or comment ended.
    last_end: usize,
}

impl Formatter<'_> {
    fn comment(&self, i: usize) -> String {
        let (s, e) = self.comments[i];
        self.text[s..e].trim_end().to_string()
    }

    /// Whether the text between two offsets holds an empty line.
    fn blank_between(&self, from: usize, to: usize) -> bool {
        let gap = &self.text[from.min(to)..to];
        let mut newlines = 0;
        for c in gap.chars() {
            match c {
                '\n' => {
                    newlines += 1;
                    if newlines >= 2 {
                        return true;
                    }
                }
                c if c.is_whitespace() => {}
                _ => newlines = 0,
            }
        }
        false
    }

    /// Places the comments before `start`, and a blank line before the node at `start` when
    /// the author left one.
    fn leading(&mut self, start: usize, out: &mut Vec<Line>) {
        while self.next < self.comments.len() && self.comments[self.next].0 < start {
            let (cs, ce) = self.comments[self.next];
            let same_line = !self.text[self.last_end.min(cs)..cs].contains('\n');
            let text = self.comment(self.next);
            let slot = if same_line && self.last_end > 0 {
                out.last_mut()
                    .and_then(Line::trailing_mut)
                    .filter(|t| t.is_none())
            } else {
                None
            };
            match slot {
                Some(t) => *t = Some(text),
                None => {
                    if self.blank_between(self.last_end, cs)
                        && !out.is_empty()
                        && !matches!(out.last(), Some(Line::Blank))
                    {
                        out.push(Line::Blank);
                    }
                    out.push(Line::Comment(text));
                }
            }
            self.last_end = ce;
            self.next += 1;
        }
        if self.blank_between(self.last_end, start)
            && !out.is_empty()
            && !matches!(out.last(), Some(Line::Blank))
        {
            out.push(Line::Blank);
        }
    }

    /// Places the comments before `end` (inside a node about to be written) on lines of their
    /// own, before it.
    fn inside(&mut self, end: usize, out: &mut Vec<Line>) {
        while self.next < self.comments.len() && self.comments[self.next].0 < end {
            out.push(Line::Comment(self.comment(self.next)));
            self.last_end = self.comments[self.next].1;
            self.next += 1;
        }
    }

    /// Places the comments before a block's closing brace at `close`.
    fn close(&mut self, close: usize, out: &mut Vec<Line>) {
        let before = self.last_end;
        self.leading(close, out);
        // No blank line before `}`.
        while matches!(out.last(), Some(Line::Blank)) {
            out.pop();
        }
        self.last_end = self.last_end.max(before);
    }

    /// Where the text of a node ends: pest's spans take in the whitespace and comments after
    /// the last token of a rule, which belong to what follows.
    fn content_end(&self, start: usize, end: usize) -> usize {
        let bytes = self.text.as_bytes();
        let end = end.min(bytes.len());
        let mut last = start;
        let mut i = start;
        while i < end {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    while i < end && bytes[i] != b'"' && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    last = i.min(end);
                }
                b'#' => {
                    while i < end && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if bytes.get(i + 1) == Some(&b'/') => {
                    while i < end && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b if b.is_ascii_whitespace() => i += 1,
                _ => {
                    i += 1;
                    last = i;
                }
            }
        }
        last
    }

    /// Adds a leaf node spanning `span`, written as `line`.
    fn leaf(&mut self, span: (usize, usize), line: Line, out: &mut Vec<Line>) {
        let span = (span.0, self.content_end(span.0, span.1));
        self.leading(span.0, out);
        self.inside(span.1, out);
        out.push(line);
        self.last_end = span.1;
    }

    fn flow_body(&mut self, flow: &Flow) -> Vec<Line> {
        let mut out = Vec::new();
        self.last_end = self.last_end.max(flow.name.span.end as usize);
        for (item, span) in flow.items.iter().zip(&flow.item_spans) {
            let sp = (span.start as usize, span.end as usize);
            self.item(item, sp, &mut out);
        }
        self.close((flow.span.end as usize).saturating_sub(1), &mut out);
        out
    }

    fn item(&mut self, item: &Item, sp: (usize, usize), out: &mut Vec<Line>) {
        let sp = (sp.0, self.content_end(sp.0, sp.1));
        let text = |t: String| Line::Text {
            text: t,
            trailing: None,
        };
        match item {
            Item::Description(s) => {
                self.leaf(sp, text(format!("description {}", quote(&s.value))), out)
            }
            Item::Key { paths, .. } => {
                let p: Vec<String> = paths.iter().map(path).collect();
                self.leaf(sp, text(format!("key {}", p.join(" | "))), out)
            }
            Item::Match(e) => self.leaf(sp, text(format!("match {}", expr(e, 0))), out),
            Item::States(decls) => {
                let line = match decls.as_slice() {
                    [d] => Line::Row {
                        class: Class::State,
                        cells: std::iter::once(d.kind.keyword().to_string())
                            .chain(std::iter::once(d.name.name.clone()))
                            .chain(d.label.iter().map(|l| quote(&l.value)))
                            .collect(),
                        trailing: None,
                    },
                    _ => {
                        let items: Vec<String> = decls
                            .iter()
                            .map(|d| match &d.label {
                                Some(l) => format!("{} {}", d.name.name, quote(&l.value)),
                                None => d.name.name.clone(),
                            })
                            .collect();
                        let kind = decls.first().map_or("state", |d| d.kind.keyword());
                        text(format!("{kind} {}", items.join(", ")))
                    }
                };
                self.leaf(sp, line, out)
            }
            Item::Rule { cond, target, .. } => {
                let one_line = format!("on {}", expr(cond, 0));
                let line = if has_list(cond)
                    && INDENT.len() + one_line.len() + 4 + target.name.len() > MAX_WIDTH
                {
                    // Too long for one line: lists wrap under their first element.
                    let cond = expr_wrapped(cond, INDENT.len() + 3);
                    text(format!("on {cond} -> {}", target.name))
                } else {
                    Line::Row {
                        class: Class::Rule,
                        cells: vec![one_line, format!("-> {}", target.name)],
                        trailing: None,
                    }
                };
                self.leaf(sp, line, out)
            }
            Item::Transitions(list) => {
                self.leading(sp.0, out);
                let mut body = Vec::new();
                for t in list {
                    let line = Line::Row {
                        class: Class::Transition,
                        cells: vec![
                            t.from.name.clone(),
                            "->".into(),
                            t.to.name.clone(),
                            value(&t.count.kind),
                        ],
                        trailing: None,
                    };
                    self.leaf(
                        (t.span.start as usize, t.span.end as usize),
                        line,
                        &mut body,
                    );
                }
                self.close(sp.1.saturating_sub(1), &mut body);
                out.push(Line::Block {
                    head: "transitions".into(),
                    body,
                    trailing: None,
                });
                self.last_end = sp.1;
            }
            Item::Unlisted(i) => self.leaf(sp, text(format!("unlisted {}", i.name)), out),
            Item::Timeout {
                state,
                after,
                artifact,
                ..
            } => self.leaf(
                sp,
                text(format!(
                    "timeout {} after {} -> {}",
                    state.name,
                    value(&after.kind),
                    artifact.name
                )),
                out,
            ),
            Item::Learn { settings, .. } => {
                self.leading(sp.0, out);
                let body = self.settings(settings, &[], sp.1.saturating_sub(1));
                out.push(Line::Block {
                    head: "learn".into(),
                    body,
                    trailing: None,
                });
                self.last_end = sp.1;
            }
            Item::Anomaly { off: true, .. } => self.leaf(sp, text("anomaly off".into()), out),
            Item::Anomaly { settings, .. } => {
                self.leading(sp.0, out);
                let body = self.settings(settings, &[], sp.1.saturating_sub(1));
                out.push(Line::Block {
                    head: "anomaly".into(),
                    body,
                    trailing: None,
                });
                self.last_end = sp.1;
            }
            Item::Alert {
                settings,
                per_artifact,
                ..
            } => {
                self.leading(sp.0, out);
                let body = self.settings(settings, per_artifact, sp.1.saturating_sub(1));
                out.push(Line::Block {
                    head: "alert".into(),
                    body,
                    trailing: None,
                });
                self.last_end = sp.1;
            }
        }
    }

    /// The body of a settings block (with `for ARTIFACT { ... }` blocks inside `alert`), in the
    /// order written; `close` is the position of the block's `}`.
    fn settings(
        &mut self,
        settings: &[Setting],
        per_artifact: &[(Ident, Vec<Setting>)],
        close: usize,
    ) -> Vec<Line> {
        enum Child<'a> {
            Setting(&'a Setting),
            For(&'a Ident, &'a [Setting]),
        }
        let mut children: Vec<(usize, Child)> = settings
            .iter()
            .map(|s| (s.name.span.start as usize, Child::Setting(s)))
            .chain(
                per_artifact
                    .iter()
                    .map(|(i, s)| (i.span.start as usize, Child::For(i, s.as_slice()))),
            )
            .collect();
        children.sort_by_key(|(at, _)| *at);
        let mut out = Vec::new();
        for (at, child) in children {
            match child {
                Child::Setting(s) => {
                    let line = Line::Row {
                        class: Class::Setting,
                        cells: vec![s.name.name.clone(), value(&s.value.kind)],
                        trailing: None,
                    };
                    self.leaf((at, s.value.span.end as usize), line, &mut out);
                }
                Child::For(name, inner) => {
                    // The block starts at its `for` and ends at its own `}`.
                    let start = self.text[..at]
                        .trim_end()
                        .strip_suffix("for")
                        .map_or(at, str::len);
                    let end = block_end(self.text, name.span.end as usize).unwrap_or(close);
                    self.leading(start, &mut out);
                    self.inside(at, &mut out);
                    let body = self.settings(inner, &[], end.saturating_sub(1));
                    // `for x { severity critical }`: one setting stays on one line.
                    let line = match body.as_slice() {
                        [Line::Row {
                            cells,
                            trailing: None,
                            ..
                        }] => Line::Text {
                            text: format!("for {} {{ {} }}", name.name, cells.join(" ")),
                            trailing: None,
                        },
                        _ => Line::Block {
                            head: format!("for {}", name.name),
                            body,
                            trailing: None,
                        },
                    };
                    out.push(line);
                    self.last_end = end;
                }
            }
        }
        self.close(close, &mut out);
        out
    }
}

/// The end (after the `}`) of the block whose `{` is the first one at or after `from`.
fn block_end(text: &str, from: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in super::parser::structural_bytes(&text[from..]) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(from + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn render(lines: &[Line], depth: usize, out: &mut String) {
    let ind = INDENT.repeat(depth);
    let mut i = 0;
    while i < lines.len() {
        match &lines[i] {
            Line::Blank => out.push('\n'),
            Line::Comment(c) => {
                out.push_str(&ind);
                out.push_str(c);
                out.push('\n');
            }
            Line::Text { text, trailing } => {
                out.push_str(&ind);
                out.push_str(text);
                push_trailing(out, trailing);
            }
            Line::Block {
                head,
                body,
                trailing,
            } => {
                out.push_str(&ind);
                out.push_str(head);
                if body.is_empty() {
                    out.push_str(" {}");
                } else {
                    out.push_str(" {\n");
                    render(body, depth + 1, out);
                    out.push_str(&ind);
                    out.push('}');
                }
                push_trailing(out, trailing);
            }
            Line::Row { class, .. } => {
                let class = *class;
                let end = lines[i..]
                    .iter()
                    .position(|l| !matches!(l, Line::Row { class: c, .. } if *c == class))
                    .map_or(lines.len(), |n| i + n);
                render_rows(&lines[i..end], class, &ind, out);
                i = end;
                continue;
            }
        }
        i += 1;
    }
}

/// A run of rows of one class, in aligned columns (a transition's count right-aligned).
fn render_rows(rows: &[Line], class: Class, ind: &str, out: &mut String) {
    let cells_of = |l: &Line| match l {
        Line::Row { cells, .. } => cells.clone(),
        _ => Vec::new(),
    };
    let all: Vec<Vec<String>> = rows.iter().map(cells_of).collect();
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for cells in &all {
        for (k, c) in cells.iter().enumerate() {
            // The last cell of a row pads nothing, except a count (right-aligned).
            if k + 1 < cells.len() || class == Class::Transition {
                widths[k] = widths[k].max(c.chars().count());
            }
        }
    }
    for (row, cells) in rows.iter().zip(&all) {
        let mut line = String::from(ind);
        for (k, c) in cells.iter().enumerate() {
            let last = k + 1 == cells.len();
            if last && class == Class::Transition {
                line.push_str(&format!("{c:>w$}", w = widths[k]));
            } else if last {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$} ", w = widths[k]));
            }
        }
        out.push_str(line.trim_end());
        if let Line::Row { trailing, .. } = row {
            push_trailing(out, trailing);
        } else {
            out.push('\n');
        }
    }
}

fn push_trailing(out: &mut String, trailing: &Option<String>) {
    if let Some(t) = trailing {
        out.push_str("  ");
        out.push_str(t);
    }
    out.push('\n');
}

/// A string literal, escaped so that it reads back as the same value.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Words a path cannot start with unquoted (they are reserved in expressions).
const RESERVED: &[&str] = &[
    "after", "for", "and", "or", "not", "in", "exists", "glob", "true", "false", "null",
];

fn plain_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn path(p: &Path) -> String {
    let mut out = String::new();
    for (i, seg) in p.segments.iter().enumerate() {
        match seg {
            Segment::Field(name) => {
                if i > 0 {
                    out.push('.');
                }
                if plain_name(name) && !(i == 0 && RESERVED.contains(&name.as_str())) {
                    out.push_str(name);
                } else {
                    out.push_str(&quote(name));
                }
            }
            Segment::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    out
}

fn number(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else if x > 0.0 {
        // What the parser makes of a number too large for a float.
        "1e999".into()
    } else {
        "-1e999".into()
    }
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Str(s) => quote(s),
        Literal::Num(x) => number(*x),
        Literal::Bool(b) => b.to_string(),
        Literal::Null => "null".into(),
    }
}

fn value(v: &ValueKind) -> String {
    match v {
        ValueKind::Duration(ms) => format_duration_ms(*ms),
        ValueKind::Number(x) => number(*x),
        ValueKind::Str(s) => quote(s),
        ValueKind::Bool(b) => b.to_string(),
        ValueKind::Null => "null".into(),
        ValueKind::Ident(i) => i.clone(),
    }
}

/// How tightly an expression binds: a child binding no tighter than its parent is wrapped in
/// parentheses, which keeps the tree exactly as written (`(a or b) or c` stays nested).
fn precedence(e: &Expr) -> u8 {
    match e {
        Expr::Or(..) => 1,
        Expr::And(..) => 2,
        Expr::Not(..) => 3,
        _ => 4,
    }
}

fn expr(e: &Expr, parent: u8) -> String {
    expr_in(e, parent, None)
}

/// An expression whose `in` lists wrap when too long; `column` is where the expression starts.
fn expr_wrapped(e: &Expr, column: usize) -> String {
    expr_in(e, 0, Some(column))
}

fn expr_in(e: &Expr, parent: u8, wrap: Option<usize>) -> String {
    let own = precedence(e);
    let body = match e {
        Expr::Or(parts, _) | Expr::And(parts, _) => {
            let sep = if matches!(e, Expr::Or(..)) {
                " or "
            } else {
                " and "
            };
            let mut s = String::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                let col = wrap.map(|c| c + column_of_end(&s) + usize::from(own <= parent));
                s.push_str(&expr_in(p, own, col));
            }
            s
        }
        Expr::Not(inner, _) => {
            let col = wrap.map(|c| c + 4 + usize::from(own <= parent));
            format!("not {}", expr_in(inner, own, col))
        }
        Expr::Cmp {
            path: p, op, value, ..
        } => format!("{} {} {}", path(p), op.as_str(), literal(value)),
        Expr::In {
            path: p,
            negated,
            list,
            ..
        } => {
            let head = format!("{} {}in [", path(p), if *negated { "not " } else { "" });
            let items: Vec<String> = list.iter().map(literal).collect();
            let one_line = format!("{head}{}]", items.join(", "));
            match wrap {
                Some(col) if col + one_line.len() > MAX_WIDTH && items.len() > 1 => {
                    let first = col + head.len();
                    let mut s = head.clone();
                    let mut line_len = first;
                    for (i, it) in items.iter().enumerate() {
                        let piece = if i + 1 < items.len() {
                            format!("{it},")
                        } else {
                            format!("{it}]")
                        };
                        if i > 0 {
                            if line_len + 1 + piece.len() > MAX_WIDTH {
                                s.push('\n');
                                s.push_str(&" ".repeat(first));
                                line_len = first;
                            } else {
                                s.push(' ');
                                line_len += 1;
                            }
                        }
                        s.push_str(&piece);
                        line_len += piece.chars().count();
                    }
                    s
                }
                _ => one_line,
            }
        }
        Expr::Exists {
            path: p, negated, ..
        } => format!("{} {}exists", path(p), if *negated { "not " } else { "" }),
        Expr::Regex {
            path: p,
            negated,
            pattern,
            ..
        } => format!(
            "{} {} {}",
            path(p),
            if *negated { "!~" } else { "=~" },
            quote(&pattern.value)
        ),
        Expr::Glob {
            path: p,
            negated,
            pattern,
            ..
        } => format!(
            "{} {}glob {}",
            path(p),
            if *negated { "not " } else { "" },
            quote(&pattern.value)
        ),
        Expr::EventGlob(s) => quote(&s.value),
    };
    if own <= parent {
        format!("({body})")
    } else {
        body
    }
}

/// Whether an expression holds an `in [...]` list (the only thing that wraps).
fn has_list(e: &Expr) -> bool {
    match e {
        Expr::Or(parts, _) | Expr::And(parts, _) => parts.iter().any(has_list),
        Expr::Not(inner, _) => has_list(inner),
        Expr::In { list, .. } => list.len() > 1,
        _ => false,
    }
}

/// The width of the last line of `s`.
fn column_of_end(s: &str) -> usize {
    s.rsplit('\n').next().map_or(0, |l| l.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = format(input).unwrap();
        assert_eq!(got, expect, "input:\n{input}");
        assert_eq!(format(&got).unwrap(), got, "not idempotent");
    }

    #[test]
    fn layout_alignment_and_comments() {
        check(
            "# head\nflow a{key payload.id # the key\ninitial s \"S\"\nterminal done\n\n\n\non \"x\" -> s\non payload.n==1->done\ntransitions{s->done 5 # five\ns -> s 10}\n// end\n}",
            "# head\nflow a {\n    key payload.id  # the key\n    initial  s \"S\"\n    terminal done\n\n    on \"x\"            -> s\n    on payload.n == 1 -> done\n    transitions {\n        s -> done  5  # five\n        s -> s    10\n    }\n    // end\n}\n",
        );
    }

    #[test]
    fn parentheses_keep_the_tree() {
        check(
            "flow a { on (\"a\" or \"b\") and not (x == 1 or y exists) or ((\"c\" or \"d\") or \"e\") -> s }",
            "flow a {\n    on (\"a\" or \"b\") and not (x == 1 or y exists) or ((\"c\" or \"d\") or \"e\") -> s\n}\n",
        );
    }

    #[test]
    fn one_spelling_per_value() {
        check(
            "flow a { learn { half_life 90s prior_weight 1.0 x \"a\\\"b\" } }",
            "flow a {\n    learn {\n        half_life    1m30s\n        prior_weight 1\n        x            \"a\\\"b\"\n    }\n}\n",
        );
    }
}
