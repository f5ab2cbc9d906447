//! The owned syntax tree of a `.flow` file. Every node carries its `Span`, so that the model
//! stage can point at exactly what the user wrote. Nothing here is validated beyond the grammar:
//! names may be unknown, counts negative, thresholds out of range; `model` checks all that.

use crate::diagnostic::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub flows: Vec<Flow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub name: Ident,
    pub span: Span,
    pub items: Vec<Item>,
    /// The whole text of each item, keyword to closing brace, parallel to `items` (the
    /// formatter places comments and blank lines by them).
    pub item_spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    Initial,
    Ordinary,
    Terminal,
    Artifact,
}

impl StateKind {
    pub fn keyword(self) -> &'static str {
        match self {
            StateKind::Initial => "initial",
            StateKind::Ordinary => "state",
            StateKind::Terminal => "terminal",
            StateKind::Artifact => "artifact",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateDecl {
    pub kind: StateKind,
    pub name: Ident,
    pub label: Option<StrLit>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Description(StrLit),
    Key {
        paths: Vec<Path>,
        span: Span,
    },
    Match(Expr),
    States(Vec<StateDecl>),
    Rule {
        cond: Expr,
        target: Ident,
        span: Span,
    },
    Transitions(Vec<Transition>),
    Unlisted(Ident),
    Timeout {
        state: Ident,
        after: Value,
        artifact: Ident,
        span: Span,
    },
    Learn {
        settings: Vec<Setting>,
        span: Span,
    },
    Alert {
        settings: Vec<Setting>,
        per_artifact: Vec<(Ident, Vec<Setting>)>,
        span: Span,
    },
    /// `anomaly { settings }`, or `anomaly off` (`off` set, no settings).
    Anomaly {
        off: bool,
        settings: Vec<Setting>,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Ident,
    pub to: Ident,
    pub count: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: Ident,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// Milliseconds; may be zero or negative here, the model rejects that.
    Duration(i64),
    Number(f64),
    Str(String),
    Bool(bool),
    Null,
    Ident(String),
}

impl ValueKind {
    /// How the value reads in a message: "a duration", "the name `x`".
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Duration(_) => "a duration".into(),
            ValueKind::Number(_) => "a number".into(),
            ValueKind::Str(_) => "a string".into(),
            ValueKind::Bool(_) => "a boolean".into(),
            ValueKind::Null => "null".into(),
            ValueKind::Ident(n) => format!("the name `{n}`"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub segments: Vec<Segment>,
    pub span: Span,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_segments(&self.segments, f)
    }
}

/// Writes a path the way it is written in a `.flow` file, quoting segments that need it.
pub fn fmt_segments(segments: &[Segment], f: &mut impl std::fmt::Write) -> std::fmt::Result {
    for (i, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Field(name) => {
                if i > 0 {
                    f.write_char('.')?;
                }
                let plain = !name.is_empty()
                    && name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    f.write_str(name)?;
                } else {
                    write!(f, "{name:?}")?;
                }
            }
            Segment::Index(n) => write!(f, "[{n}]")?,
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Vec<Expr>, Span),
    And(Vec<Expr>, Span),
    Not(Box<Expr>, Span),
    Cmp {
        path: Path,
        op: CmpOp,
        value: Literal,
        span: Span,
    },
    In {
        path: Path,
        negated: bool,
        list: Vec<Literal>,
        span: Span,
    },
    Exists {
        path: Path,
        negated: bool,
        span: Span,
    },
    Regex {
        path: Path,
        negated: bool,
        pattern: StrLit,
        span: Span,
    },
    Glob {
        path: Path,
        negated: bool,
        pattern: StrLit,
        span: Span,
    },
    /// `"instance.create.*"` alone: `event_type glob "instance.create.*"`.
    EventGlob(StrLit),
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Or(_, s) | Expr::And(_, s) | Expr::Not(_, s) => *s,
            Expr::Cmp { span, .. }
            | Expr::In { span, .. }
            | Expr::Exists { span, .. }
            | Expr::Regex { span, .. }
            | Expr::Glob { span, .. } => *span,
            Expr::EventGlob(s) => s.span,
        }
    }
}
