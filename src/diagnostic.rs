//! Diagnostics: one type for every problem found in what the user wrote, and one renderer.
//!
//! Every stage (syntax, model) reports all the problems it finds as `Diagnostic`s rather than
//! stopping at the first. Each carries a stable code (`F0xx` errors, `W1xx` warnings) so that
//! tests, docs and users can point at one problem. The renderer prints them rustc-style
//! (`file:line:col`, the source line, a caret under the span, help) or as JSON for editors and CI.

use serde::Serialize;
use std::fmt::Write as _;

/// Index of a source file in a [`SourceSet`].
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Stable diagnostic codes. The numbers never change meaning; new problems get new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Syntax,
    UnreadableFile,
    TooDeep,
    BadEscape,
    Duplicate,
    UnknownState,
    BadCount,
    BadThreshold,
    BadDuration,
    TransitionFromFinal,
    NoInitial,
    BadRegex,
    MissingKey,
    BadSetting,
    BadTimeout,
    NoFlow,
    ResolveAboveThreshold,
    TooManyStates,
    Unreachable,
    DeadEnd,
    ArtifactUnreachable,
    ShadowedRule,
    UnusedState,
    SamplePathMissing,
    SampleUnmatchedRule,
    SampleUnmatchedEvents,
    SampleWrongType,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "F001",
            Code::UnreadableFile => "F002",
            Code::TooDeep => "F003",
            Code::BadEscape => "F004",
            Code::Duplicate => "F005",
            Code::UnknownState => "F006",
            Code::BadCount => "F007",
            Code::BadThreshold => "F008",
            Code::BadDuration => "F009",
            Code::TransitionFromFinal => "F010",
            Code::NoInitial => "F011",
            Code::BadRegex => "F012",
            Code::MissingKey => "F013",
            Code::BadSetting => "F014",
            Code::BadTimeout => "F015",
            Code::NoFlow => "F016",
            Code::ResolveAboveThreshold => "F017",
            Code::TooManyStates => "F018",
            Code::Unreachable => "W101",
            Code::DeadEnd => "W102",
            Code::ArtifactUnreachable => "W103",
            Code::ShadowedRule => "W104",
            Code::UnusedState => "W105",
            Code::SamplePathMissing => "W106",
            Code::SampleUnmatchedRule => "W107",
            Code::SampleUnmatchedEvents => "W108",
            Code::SampleWrongType => "W109",
        }
    }

    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A secondary place that explains the diagnostic ("first defined here").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    /// Where the problem is; `None` for problems of a whole file with no text to point at.
    pub span: Option<Span>,
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic whose severity follows from its code.
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: code.severity(),
            code,
            message: message.into(),
            span: Some(span),
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn whole_file(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: code.severity(),
            code,
            message: message.into(),
            span: None,
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// One source file as read: its display name and its text (empty when it could not be read).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self.text[start..floor_char_boundary(&self.text, offset)]
            .chars()
            .count();
        (line + 1, col + 1)
    }

    /// The text of a 1-based line, without its newline.
    pub fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map(|e| e - 1)
            .unwrap_or(self.text.len());
        self.text[start..end].trim_end_matches('\r')
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// All the files of one compilation, indexed by [`FileId`].
#[derive(Debug, Clone, Default)]
pub struct SourceSet {
    pub files: Vec<SourceFile>,
}

impl SourceSet {
    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        (self.files.len() - 1) as FileId
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id as usize]
    }
}

/// Renders diagnostics the way rustc does, without colour so that snapshots stay readable.
///
/// The gutter (the column of line numbers) is as wide as the largest line number shown, and
/// the arrow, the bars and the `=` of help all line up with it, as in rustc.
pub fn render_human(sources: &SourceSet, file: FileId, diag: &Diagnostic) -> String {
    let mut out = String::new();
    let sev = match diag.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let _ = writeln!(out, "{sev}[{}]: {}", diag.code.as_str(), diag.message);
    let src = sources.get(diag.span.map(|s| s.file).unwrap_or(file));
    let gutter = diag
        .span
        .iter()
        .chain(diag.labels.iter().map(|l| &l.span))
        .map(|s| {
            let line = sources.get(s.file).line_col(s.start as usize).0;
            line.to_string().len()
        })
        .max()
        .unwrap_or(1);
    match diag.span {
        None => {
            let _ = writeln!(out, "{:gutter$}--> {}", "", src.name);
        }
        Some(span) => {
            render_snippet(&mut out, src, span, None, gutter);
        }
    }
    for label in &diag.labels {
        render_snippet(
            &mut out,
            sources.get(label.span.file),
            label.span,
            Some(&label.message),
            gutter,
        );
    }
    if let Some(help) = &diag.help {
        let _ = writeln!(out, "{:gutter$} = help: {help}", "");
    }
    out
}

fn render_snippet(
    out: &mut String,
    src: &SourceFile,
    span: Span,
    note: Option<&str>,
    gutter: usize,
) {
    let (line, col) = src.line_col(span.start as usize);
    let (end_line, end_col) = src.line_col(span.end as usize);
    let _ = writeln!(out, "{:gutter$}--> {}:{}:{}", "", src.name, line, col);
    let text = src.line_text(line);
    // Tabs would misplace the caret; show them as single spaces.
    let shown: String = text
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let _ = writeln!(out, "{:gutter$} |", "");
    let _ = writeln!(out, "{line:>gutter$} | {shown}");
    let width = if end_line == line {
        end_col.saturating_sub(col).max(1)
    } else {
        (text.chars().count() + 1).saturating_sub(col).max(1)
    };
    let carets = "^".repeat(width.min(120));
    match note {
        Some(n) => {
            let _ = writeln!(
                out,
                "{:gutter$} | {:pad$}{carets} {n}",
                "",
                "",
                pad = col - 1
            );
        }
        None => {
            let _ = writeln!(out, "{:gutter$} | {:pad$}{carets}", "", "", pad = col - 1);
        }
    }
}

/// The JSON form of one diagnostic, with line and column resolved, for editors and CI.
#[derive(Serialize)]
pub struct JsonDiagnostic<'a> {
    pub file: &'a str,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub severity: Severity,
    pub code: &'static str,
    pub message: &'a str,
    pub help: Option<&'a str>,
    pub labels: Vec<JsonLabel<'a>>,
}

#[derive(Serialize)]
pub struct JsonLabel<'a> {
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub message: &'a str,
}

pub fn to_json<'a>(
    sources: &'a SourceSet,
    file: FileId,
    diag: &'a Diagnostic,
) -> JsonDiagnostic<'a> {
    let src = sources.get(diag.span.map(|s| s.file).unwrap_or(file));
    let (line, column, end_line, end_column) = match diag.span {
        Some(s) => {
            let (l, c) = src.line_col(s.start as usize);
            let (el, ec) = src.line_col(s.end as usize);
            (Some(l), Some(c), Some(el), Some(ec))
        }
        None => (None, None, None, None),
    };
    JsonDiagnostic {
        file: &src.name,
        line,
        column,
        end_line,
        end_column,
        severity: diag.severity,
        code: diag.code.as_str(),
        message: &diag.message,
        help: diag.help.as_deref(),
        labels: diag
            .labels
            .iter()
            .map(|l| {
                let s = sources.get(l.span.file);
                let (line, column) = s.line_col(l.span.start as usize);
                JsonLabel {
                    file: &s.name,
                    line,
                    column,
                    message: &l.message,
                }
            })
            .collect(),
    }
}

/// The closest known name within a small edit distance, for "did you mean" help. Lives here,
/// at the start of the data path, so that the parser and the compiler can both use it.
pub fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = name.chars().count().div_ceil(3).max(1);
    known
        .map(|k| (levenshtein(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let f = SourceFile::new("a", "ab\nçé x\n");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(3), (2, 1));
        assert_eq!(f.line_col(8), (2, 4));
        assert_eq!(f.line_text(2), "çé x");
    }

    #[test]
    fn renders_caret_under_span() {
        let mut set = SourceSet::default();
        let id = set.add(SourceFile::new("m.flow", "flow a {\n  state x\n}\n"));
        let d = Diagnostic::new(
            Code::UnusedState,
            Span::new(id, 17, 18),
            "state `x` is never used",
        )
        .with_help("remove it");
        let out = render_human(&set, id, &d);
        assert_eq!(
            out,
            "warning[W105]: state `x` is never used\n --> m.flow:2:9\n  |\n2 |   state x\n  |         ^\n  = help: remove it\n"
        );
    }
}
