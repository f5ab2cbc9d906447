//! Compilation: source files -> validated `CompiledFlow`s, reporting every problem found.
//!
//! Each file is checked for what a file must be (UTF-8 text, not binary, not huge), parsed, and
//! each flow lowered and validated on its own, so one broken flow does not hide the problems of
//! the next. Warnings (`W1xx`) are computed only for flows without errors: on a broken flow they
//! would mostly repeat the errors.

use super::checks;
use super::cond::{Cond, FieldPath, Glob};
use super::flow::*;
pub use crate::diagnostic::did_you_mean;
use crate::diagnostic::{Code, Diagnostic, FileId, SourceFile, SourceSet, Span};
use crate::syntax::ast::{self, Expr, Item, StateKind, ValueKind};
use std::collections::HashMap;

/// The settings of each block, for did-you-mean help and the language server's completion.
pub const LEARN_SETTINGS: &[&str] = &[
    "model",
    "half_life",
    "prior_weight",
    "history",
    "min_observations",
    "expire",
    "repeats",
    "calendar",
    "features",
    "from",
];
pub const ANOMALY_SETTINGS: &[&str] = &[
    "unknown_events",
    "min_probability",
    "top",
    "window",
    "window_surprise",
    "false_alarm_rate",
    "min_learned",
];
pub const ALERT_SETTINGS: &[&str] = &["threshold", "resolve", "severity"];

/// The result of compiling a set of files: the flows that compiled, and every diagnostic.
#[derive(Debug, Default)]
pub struct Compilation {
    pub sources: SourceSet,
    pub flows: Vec<CompiledFlow>,
    /// Each diagnostic with the file it belongs to (for diagnostics without a span).
    pub diagnostics: Vec<(FileId, Diagnostic)>,
}

impl Compilation {
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|(_, d)| d.is_error())
            .count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    /// All diagnostics rendered rustc-style, one after the other.
    pub fn render(&self) -> String {
        self.diagnostics
            .iter()
            .map(|(f, d)| crate::diagnostic::render_human(&self.sources, *f, d))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Compiles files given as raw bytes (as read from disk) under their display names.
pub fn compile_files(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Compilation {
    let mut c = Compilation::default();
    let mut texts: Vec<(FileId, bool)> = Vec::new();
    for (name, bytes) in files {
        match check_bytes(&bytes) {
            Ok(()) => {
                // check_bytes has verified UTF-8.
                let text = String::from_utf8(bytes).unwrap_or_default();
                let id = c.sources.add(SourceFile::new(name, text));
                texts.push((id, true));
            }
            Err(msg) => {
                let id = c.sources.add(SourceFile::new(name, String::new()));
                c.diagnostics
                    .push((id, Diagnostic::whole_file(Code::UnreadableFile, msg)));
                texts.push((id, false));
            }
        }
    }
    let mut flow_names: HashMap<String, Span> = HashMap::new();
    for (id, ok) in texts {
        if !ok {
            continue;
        }
        let text = c.sources.get(id).text.clone();
        let file = match crate::syntax::parse(id, &text) {
            Ok(f) => f,
            Err(diags) => {
                c.diagnostics.extend(diags.into_iter().map(|d| (id, d)));
                continue;
            }
        };
        if file.flows.is_empty() {
            c.diagnostics.push((
                id,
                Diagnostic::whole_file(Code::NoFlow, "this file defines no flow")
                    .with_help("a .flow file holds one or more `flow NAME { ... }` blocks"),
            ));
        }
        for flow in &file.flows {
            if let Some(first) = flow_names.get(&flow.name.name) {
                c.diagnostics.push((
                    id,
                    Diagnostic::new(
                        Code::Duplicate,
                        flow.name.span,
                        format!("flow `{}` is defined twice", flow.name.name),
                    )
                    .with_label(*first, "first defined here")
                    .with_help("flow names are unique across all loaded files"),
                ));
            }
            // A duplicate is still compiled, so that its own problems are reported too.
            let duplicate = flow_names.contains_key(&flow.name.name);
            flow_names
                .entry(flow.name.name.clone())
                .or_insert(flow.name.span);
            let line = c.sources.get(id).line_col(flow.span.start as usize).0;
            let origin = format!("{}:{}", c.sources.get(id).name, line);
            let mut fc = FlowCompiler {
                src: c.sources.get(id),
                diags: Vec::new(),
            };
            let compiled = fc.flow(flow, origin);
            let had_errors = fc.diags.iter().any(|d| d.is_error());
            let mut diags = fc.diags;
            if let (false, Some(cf)) = (had_errors, compiled) {
                diags.extend(checks::warnings(&cf, flow, id));
                if !duplicate {
                    c.flows.push(cf);
                }
            }
            c.diagnostics.extend(diags.into_iter().map(|d| (id, d)));
        }
    }
    c
}

/// Refuses bytes that are not a plausible `.flow` file, with a message saying why.
fn check_bytes(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > crate::syntax::MAX_FILE_BYTES {
        return Err(format!(
            "file is too large (over the limit of {} KiB for a .flow file)",
            crate::syntax::MAX_FILE_BYTES / 1024
        ));
    }
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(format!(
            "file looks binary (a NUL byte at offset {pos}); a .flow file is UTF-8 text"
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(format!(
            "file is not valid UTF-8 (invalid byte at offset {at}, line {line})"
        ));
    }
    Ok(())
}

/// The most states one flow may have (F018). The model keeps n x n counts (about 40 bytes
/// per pair: 40 MB at the limit) and a solve reads them all, so the limit bounds a flow's
/// memory and, with `markov::SOLVE_WORK_PER_CALL`, its cost per message.
pub const MAX_STATES: usize = 1000;

/// `12345` as `12,345`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct FlowCompiler<'a> {
    src: &'a SourceFile,
    diags: Vec<Diagnostic>,
}

impl FlowCompiler<'_> {
    fn err(&mut self, code: Code, span: Span, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(code, span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn flow(&mut self, flow: &ast::Flow, origin: String) -> Option<CompiledFlow> {
        // States first: everything else refers to them.
        let mut states: Vec<State> = Vec::new();
        let mut state_spans: Vec<Span> = Vec::new();
        for item in &flow.items {
            let Item::States(decls) = item else { continue };
            for d in decls {
                if let Some(i) = states.iter().position(|s| s.name == d.name.name) {
                    let first = state_spans[i];
                    self.err(
                        Code::Duplicate,
                        d.name.span,
                        format!("state `{}` is declared twice", d.name.name),
                    )
                    .labels
                    .push(crate::diagnostic::Label {
                        span: first,
                        message: "first declared here".into(),
                    });
                    continue;
                }
                if states.len() >= StateId::MAX as usize {
                    self.err(
                        Code::BadSetting,
                        d.name.span,
                        "too many states in one flow (the limit is 65,534)",
                    );
                    break;
                }
                states.push(State {
                    name: d.name.name.clone(),
                    label: d.label.as_ref().map(|l| l.value.clone()),
                    kind: match d.kind {
                        StateKind::Initial => Kind::Initial,
                        StateKind::Ordinary => Kind::Ordinary,
                        StateKind::Terminal => Kind::Terminal,
                        StateKind::Artifact => Kind::Artifact,
                    },
                });
                state_spans.push(d.name.span);
            }
        }
        if states.len() > MAX_STATES {
            self.err(
                Code::TooManyStates,
                state_spans[MAX_STATES],
                format!(
                    "flow `{}` has {} states; the limit is {}",
                    flow.name.name,
                    thousands(states.len()),
                    thousands(MAX_STATES)
                ),
            )
            .help = Some(
                "the model keeps n x n counts per flow and re-solves them as it learns: \
                 split the flow, or merge states that are never told apart"
                    .into(),
            );
        }
        if !states.iter().any(|s| s.kind == Kind::Initial) {
            self.err(
                Code::NoInitial,
                flow.name.span,
                format!("flow `{}` has no initial state", flow.name.name),
            )
            .help = Some(
                "declare where objects start: `initial requested \"API request received\"`".into(),
            );
        }

        let mut once: HashMap<&'static str, Span> = HashMap::new();
        let mut description = String::new();
        let mut keys = Vec::new();
        let mut filter = None;
        let mut rules = Vec::new();
        let mut priors: Vec<(StateId, StateId, f64)> = Vec::new();
        let mut prior_spans: HashMap<(StateId, StateId), Span> = HashMap::new();
        let mut unlisted = Unlisted::Learn;
        let mut timeouts: Vec<Option<(i64, StateId)>> = vec![None; states.len()];
        let mut timeout_spans: HashMap<StateId, Span> = HashMap::new();
        let mut learning = Learning::default();
        let mut flow_level = AlertLevel::default();
        let mut anomaly = AnomalyConfig::default();
        let mut per_artifact: Vec<(StateId, Vec<ast::Setting>)> = Vec::new();

        for item in &flow.items {
            let unique = match item {
                Item::Description(s) => Some(("description", s.span)),
                Item::Key { span, .. } => Some(("key", *span)),
                Item::Match(e) => Some(("match", e.span())),
                Item::Unlisted(i) => Some(("unlisted", i.span)),
                Item::Learn { span, .. } => Some(("learn", *span)),
                Item::Alert { span, .. } => Some(("alert", *span)),
                Item::Anomaly { span, .. } => Some(("anomaly", *span)),
                _ => None,
            };
            if let Some((what, span)) = unique {
                if let Some(first) = once.get(what) {
                    let first = *first;
                    self.err(
                        Code::Duplicate,
                        span,
                        format!("`{what}` is given twice in flow `{}`", flow.name.name),
                    )
                    .labels
                    .push(crate::diagnostic::Label {
                        span: first,
                        message: "first given here".into(),
                    });
                    continue;
                }
                once.insert(what, span);
            }
            match item {
                Item::Description(s) => description = s.value.clone(),
                Item::Key { paths, .. } => {
                    keys = paths
                        .iter()
                        .map(|p| FieldPath::new(p.segments.clone()))
                        .collect()
                }
                Item::Match(e) => filter = self.cond(e),
                Item::States(_) => {}
                Item::Rule { cond, target, span } => {
                    let c = self.cond(cond);
                    let t = self.state_ref(&states, target);
                    if let (Some(cond), Some(target)) = (c, t) {
                        rules.push(Rule {
                            cond,
                            target,
                            line: self.src.line_col(span.start as usize).0,
                        });
                    }
                }
                Item::Transitions(list) => {
                    for t in list {
                        let from = self.state_ref(&states, &t.from);
                        let to = self.state_ref(&states, &t.to);
                        let count = self.count(&t.count);
                        let (Some(from), Some(to), Some(count)) = (from, to, count) else {
                            continue;
                        };
                        let fk = states[from as usize].kind;
                        if fk.is_final() {
                            let what = if fk == Kind::Terminal {
                                "terminal state"
                            } else {
                                "artifact"
                            };
                            self.err(
                                Code::TransitionFromFinal,
                                t.from.span,
                                format!("transition out of {what} `{}`", t.from.name),
                            )
                            .help = Some(format!(
                                "a {what} ends the object's run; declare `{}` with `state` if the process goes on from it",
                                t.from.name
                            ));
                            continue;
                        }
                        if let Some(first) = prior_spans.get(&(from, to)) {
                            let first = *first;
                            self.err(
                                Code::Duplicate,
                                t.span,
                                format!(
                                    "transition `{} -> {}` is listed twice",
                                    t.from.name, t.to.name
                                ),
                            )
                            .labels
                            .push(crate::diagnostic::Label {
                                span: first,
                                message: "first listed here".into(),
                            });
                            continue;
                        }
                        prior_spans.insert((from, to), t.span);
                        priors.push((from, to, count));
                    }
                }
                Item::Unlisted(policy) => match policy.name.as_str() {
                    "learn" => unlisted = Unlisted::Learn,
                    "report" => unlisted = Unlisted::Report,
                    other => {
                        self.err(
                            Code::BadSetting,
                            policy.span,
                            format!("unknown policy `{other}` for unlisted transitions"),
                        )
                        .help = Some("use `unlisted learn` or `unlisted report`".into());
                    }
                },
                Item::Timeout {
                    state,
                    after,
                    artifact,
                    span,
                } => {
                    let s = self.state_ref(&states, state);
                    let a = self.state_ref(&states, artifact);
                    let d = self.positive_duration(after);
                    let (Some(s), Some(a), Some(d)) = (s, a, d) else {
                        continue;
                    };
                    if states[s as usize].kind.is_final() {
                        self.err(
                            Code::BadTimeout,
                            state.span,
                            format!("`{}` is final: an object never waits there", state.name),
                        );
                        continue;
                    }
                    if states[a as usize].kind != Kind::Artifact {
                        self.err(
                            Code::BadTimeout,
                            artifact.span,
                            format!(
                                "a timeout leads to an artifact, and `{}` is not one",
                                artifact.name
                            ),
                        )
                        .help = Some(format!(
                            "declare it with `artifact {} \"...\"`",
                            artifact.name
                        ));
                        continue;
                    }
                    if let Some(first) = timeout_spans.get(&s) {
                        let first = *first;
                        self.err(
                            Code::Duplicate,
                            *span,
                            format!("state `{}` has two timeouts", state.name),
                        )
                        .labels
                        .push(crate::diagnostic::Label {
                            span: first,
                            message: "first given here".into(),
                        });
                        continue;
                    }
                    timeout_spans.insert(s, *span);
                    timeouts[s as usize] = Some((d, a));
                }
                Item::Learn { settings, .. } => self.learn(settings, &mut learning),
                Item::Anomaly { off, settings, .. } => {
                    anomaly.off = *off;
                    self.anomaly(settings, &mut anomaly);
                }
                Item::Alert {
                    settings,
                    per_artifact: arts,
                    ..
                } => {
                    let resolve_given = settings.iter().any(|s| s.name.name == "resolve");
                    self.alert_level(settings, &mut flow_level, resolve_given);
                    for (name, s) in arts {
                        let Some(id) = self.state_ref(&states, name) else {
                            continue;
                        };
                        if states[id as usize].kind != Kind::Artifact {
                            self.err(
                                Code::BadSetting,
                                name.span,
                                format!(
                                    "`{}` is not an artifact: alert levels are set per artifact",
                                    name.name
                                ),
                            );
                            continue;
                        }
                        per_artifact.push((id, s.clone()));
                    }
                }
            }
        }
        if keys.is_empty() {
            self.err(
                Code::MissingKey,
                flow.name.span,
                format!(
                    "flow `{}` does not say which object a message is about",
                    flow.name.name
                ),
            )
            .help = Some(
                "add a key, e.g. `key payload.\"nova_object.data\".uuid | payload.instance_id`"
                    .into(),
            );
        }
        let mut alerts = vec![flow_level; states.len()];
        for (id, settings) in per_artifact {
            // Unset fields inherit the flow's level; a threshold without a resolve level
            // resolves at 80% of that threshold.
            let mut level = flow_level;
            let own_resolve = settings.iter().any(|s| s.name.name == "resolve");
            self.alert_level(&settings, &mut level, own_resolve);
            alerts[id as usize] = level;
        }
        Some(CompiledFlow {
            name: flow.name.name.clone(),
            description,
            origin,
            keys,
            filter,
            states,
            rules,
            priors,
            unlisted,
            timeouts,
            learning,
            alerts,
            anomaly,
        })
    }

    fn state_ref(&mut self, states: &[State], name: &ast::Ident) -> Option<StateId> {
        if let Some(i) = states.iter().position(|s| s.name == name.name) {
            return Some(i as StateId);
        }
        let d = self.err(
            Code::UnknownState,
            name.span,
            format!("unknown state `{}`", name.name),
        );
        d.help = Some(
            match did_you_mean(&name.name, states.iter().map(|s| s.name.as_str())) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("declare it first, e.g. `state {}`", name.name),
            },
        );
        None
    }

    fn count(&mut self, v: &ast::Value) -> Option<f64> {
        match v.kind {
            ValueKind::Number(n) if n.is_finite() && n >= 0.0 => Some(n),
            ValueKind::Number(n) if n < 0.0 => {
                self.err(Code::BadCount, v.span, "a count cannot be negative")
                    .help =
                    Some("counts are how many times the transition was seen, 0 or more".into());
                None
            }
            ref other => {
                self.err(
                    Code::BadCount,
                    v.span,
                    format!("a count must be a number, found {}", other.describe()),
                )
                .help = Some("write the count as a plain number: `x -> y 30`".into());
                None
            }
        }
    }

    fn positive_duration(&mut self, v: &ast::Value) -> Option<i64> {
        match v.kind {
            ValueKind::Duration(ms) if ms > 0 => Some(ms),
            ValueKind::Duration(_) => {
                self.err(
                    Code::BadDuration,
                    v.span,
                    "a duration must be greater than zero",
                )
                .help = Some("durations look like `250ms`, `90s`, `5m`, `2h` or `7d`".into());
                None
            }
            ref other => {
                self.err(
                    Code::BadDuration,
                    v.span,
                    format!("expected a duration, found {}", other.describe()),
                )
                .help = Some("durations look like `250ms`, `90s`, `5m`, `2h` or `7d`".into());
                None
            }
        }
    }

    /// A setting whose value is one of a few words: the value of the word, or an error that
    /// lists them (F014).
    fn keyword<T: Copy>(
        &mut self,
        v: &ast::Value,
        setting: &str,
        choices: &[(&str, T)],
        help: &str,
    ) -> Option<T> {
        if let ValueKind::Ident(w) = &v.kind {
            if let Some((_, t)) = choices.iter().find(|(name, _)| name == w) {
                return Some(*t);
            }
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
        let list = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) if rest.len() == 1 => format!("{} or {last}", rest[0]),
            Some((last, rest)) => format!("{}, or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.err(
            Code::BadSetting,
            v.span,
            format!("`{setting}` is {list}, found {}", v.kind.describe()),
        )
        .help = Some(help.into());
        None
    }

    fn learn(&mut self, settings: &[ast::Setting], l: &mut Learning) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        // `model` given explicitly, and whether a setting pins one member of the family.
        let mut model: Option<bool> = None;
        let mut pinned = false;
        for s in settings {
            if matches!(
                s.name.name.as_str(),
                "history" | "min_observations" | "calendar" | "features"
            ) {
                pinned = true;
            }
            if self.duplicate_setting(&mut seen, s) {
                continue;
            }
            let v = &s.value;
            match s.name.name.as_str() {
                "half_life" => match &v.kind {
                    ValueKind::Ident(w) if w == "off" => l.half_life_ms = None,
                    _ => {
                        if let Some(ms) = self.positive_duration(v) {
                            l.half_life_ms = Some(ms)
                        }
                    }
                },
                "expire" => {
                    if let Some(ms) = self.positive_duration(v) {
                        l.expire_ms = ms
                    }
                }
                "prior_weight" => {
                    if let Some(n) = self.number(v, 0.0, f64::MAX, "a number >= 0") {
                        l.prior_weight = n
                    }
                }
                "min_observations" => {
                    if let Some(n) = self.number(v, 0.0, f64::MAX, "a number >= 0") {
                        l.min_observations = n
                    }
                }
                "history" => {
                    if let Some(n) = self.number(v, 1.0, 4.0, "a whole number from 1 to 4") {
                        if n.fract() != 0.0 {
                            self.err(
                                Code::BadSetting,
                                v.span,
                                "`history` must be a whole number from 1 to 4",
                            );
                        } else {
                            l.history = n as usize
                        }
                    }
                }
                "repeats" => {
                    if let Some(b) = self.keyword(v, "repeats", &[("count", true), ("ignore", false)],
                        "`count`: an activity that repeats is a transition to itself (process logs); `ignore`: a repeated notification (the default)") {
                        l.count_repeats = b;
                    }
                }
                "calendar" => {
                    let choices = [("off", Calendar::Off), ("day", Calendar::Day), ("week", Calendar::Week)];
                    if let Some(c) = self.keyword(v, "calendar", &choices,
                        "`day`: condition on the UTC time of day the object entered its state (3-hour classes); `week`: the same, weekdays apart from weekends") {
                        l.calendar = c;
                    }
                }
                "features" => {
                    if let Some(b) = self.keyword(v, "features", &[("on", true), ("off", false)],
                        "`on`: predict the next state from every signal of the object's past at once (previous states, dwell times, time of day, time in the flow) with a log-linear model per state") {
                        l.features = b;
                    }
                }
                "from" => {
                    if let Some(b) = self.keyword(v, "from", &[("all", false), ("success", true)],
                        "`success`: learn an object's steps only once it ends in a success state (failures do not teach the model that failures are normal); `all` (the default): learn every step as it happens") {
                        l.from_success = b;
                    }
                }
                "model" => {
                    model = self.keyword(v, "model", &[("auto", true), ("fixed", false)],
                        "`auto` (the default): weigh a family of predictors (history 1 to 4, with and without dwell classes) by how well each has predicted; `fixed`: the one model `history` and `min_observations` describe");
                }
                other => self.unknown_setting(
                    &s.name,
                    other,
                    LEARN_SETTINGS,
                    "learn",
                ),
            }
        }
        l.auto = model.unwrap_or(!pinned);
    }

    fn anomaly(&mut self, settings: &[ast::Setting], a: &mut AnomalyConfig) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for s in settings {
            if self.duplicate_setting(&mut seen, s) {
                continue;
            }
            let v = &s.value;
            match s.name.name.as_str() {
                "min_probability" => {
                    if let Some(p) = self.probability(v) {
                        a.min_probability = Some(p)
                    }
                }
                "false_alarm_rate" => {
                    if let Some(p) = self.probability(v) {
                        if p > 0.0 && p < 1.0 {
                            a.false_alarm_rate = p
                        } else {
                            self.err(
                                Code::BadThreshold,
                                v.span,
                                "`false_alarm_rate` must be above 0 and below 1",
                            );
                        }
                    }
                }
                "top" => {
                    if let Some(n) = self.whole(v, 1.0, 1000.0, "`top`", "from 1 to 1000") {
                        a.top = Some(n as u16)
                    }
                }
                "window" => {
                    let max = f64::from(AnomalyConfig::MAX_WINDOW);
                    if let Some(n) = self.whole(v, 1.0, max, "`window`", "from 1 to 5") {
                        a.window = n as u8
                    }
                }
                "window_surprise" => {
                    if let Some(n) = self.number(v, 0.0, 1e6, "a surprise in nats >= 0") {
                        a.window_surprise = Some(n)
                    }
                }
                "min_learned" => {
                    if let Some(n) = self.whole(v, 0.0, 1e12, "`min_learned`", ">= 0") {
                        a.min_learned = n as u64
                    }
                }
                "unknown_events" => {
                    if let Some(b) = self.keyword(v, "unknown_events", &[("on", true), ("off", false)],
                        "`on`: a message no rule matches, about an object this flow has in flight, is an anomaly for it (maximal surprise)") {
                        a.unknown_events = b;
                    }
                }
                other => self.unknown_setting(
                    &s.name,
                    other,
                    ANOMALY_SETTINGS,
                    "anomaly",
                ),
            }
        }
    }

    /// A whole number in `lo..=hi`, or an error naming the setting.
    fn whole(&mut self, v: &ast::Value, lo: f64, hi: f64, name: &str, range: &str) -> Option<f64> {
        let what = format!("a whole number {range}");
        let n = self.number(v, lo, hi, &what)?;
        if n.fract() != 0.0 {
            self.err(
                Code::BadSetting,
                v.span,
                format!("{name} must be a whole number {range}"),
            );
            return None;
        }
        Some(n)
    }

    fn alert_level(
        &mut self,
        settings: &[ast::Setting],
        level: &mut AlertLevel,
        resolve_given: bool,
    ) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut threshold_span = None;
        let mut resolve_span = None;
        for s in settings {
            if self.duplicate_setting(&mut seen, s) {
                continue;
            }
            let v = &s.value;
            match s.name.name.as_str() {
                "threshold" => {
                    if let Some(t) = self.probability(v) {
                        level.threshold = t;
                        threshold_span = Some(v.span);
                    }
                }
                "resolve" => {
                    if let Some(r) = self.probability(v) {
                        level.resolve = r;
                        resolve_span = Some(v.span);
                    }
                }
                "severity" => match &v.kind {
                    ValueKind::Ident(w) | ValueKind::Str(w) => match w.as_str() {
                        "info" => level.severity = Severity::Info,
                        "warning" => level.severity = Severity::Warning,
                        "critical" => level.severity = Severity::Critical,
                        _ => {
                            self.err(Code::BadSetting, v.span, format!("unknown severity `{w}`"))
                                .help = Some("use `info`, `warning` or `critical`".into());
                        }
                    },
                    other => {
                        self.err(
                            Code::BadSetting,
                            v.span,
                            format!("a severity is a name, found {}", other.describe()),
                        )
                        .help = Some("use `info`, `warning` or `critical`".into());
                    }
                },
                other => self.unknown_setting(&s.name, other, ALERT_SETTINGS, "alert"),
            }
        }
        if !resolve_given && threshold_span.is_some() {
            // Default hysteresis: resolve at 80% of the threshold.
            level.resolve = level.threshold * 0.8;
        }
        if level.resolve > level.threshold {
            if let Some(span) = resolve_span.or(threshold_span) {
                self.err(
                    Code::ResolveAboveThreshold,
                    span,
                    format!(
                        "the resolve level {} is above the alert threshold {}",
                        level.resolve, level.threshold
                    ),
                )
                .help = Some("an alert resolves when the risk falls below `resolve`, so it must be <= `threshold`".into());
            }
        }
    }

    fn probability(&mut self, v: &ast::Value) -> Option<f64> {
        match v.kind {
            ValueKind::Number(n) if (0.0..=1.0).contains(&n) => Some(n),
            ValueKind::Number(n) => {
                self.err(
                    Code::BadThreshold,
                    v.span,
                    format!("{n} is not a probability"),
                )
                .help =
                    Some("thresholds are probabilities between 0 and 1, e.g. `0.1` for 10%".into());
                None
            }
            ref other => {
                self.err(
                    Code::BadThreshold,
                    v.span,
                    format!("a threshold must be a number, found {}", other.describe()),
                )
                .help =
                    Some("thresholds are probabilities between 0 and 1, e.g. `0.1` for 10%".into());
                None
            }
        }
    }

    fn number(&mut self, v: &ast::Value, lo: f64, hi: f64, what: &str) -> Option<f64> {
        match v.kind {
            ValueKind::Number(n) if n >= lo && n <= hi => Some(n),
            ref other => {
                let found = match other {
                    ValueKind::Number(n) => n.to_string(),
                    o => o.describe(),
                };
                self.err(
                    Code::BadSetting,
                    v.span,
                    format!("expected {what}, found {found}"),
                );
                None
            }
        }
    }

    fn duplicate_setting<'s>(
        &mut self,
        seen: &mut HashMap<&'s str, Span>,
        s: &'s ast::Setting,
    ) -> bool {
        if let Some(first) = seen.get(s.name.name.as_str()) {
            let first = *first;
            self.err(
                Code::Duplicate,
                s.name.span,
                format!("setting `{}` is given twice", s.name.name),
            )
            .labels
            .push(crate::diagnostic::Label {
                span: first,
                message: "first given here".into(),
            });
            return true;
        }
        seen.insert(&s.name.name, s.name.span);
        false
    }

    fn unknown_setting(&mut self, name: &ast::Ident, other: &str, known: &[&str], block: &str) {
        let help = match did_you_mean(other, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "`{block}` takes {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.err(
            Code::BadSetting,
            name.span,
            format!("unknown setting `{other}` in `{block}`"),
        )
        .help = Some(help);
    }

    fn cond(&mut self, e: &Expr) -> Option<Cond> {
        Some(match e {
            Expr::Or(parts, _) => Cond::Or(self.conds(parts)?),
            Expr::And(parts, _) => Cond::And(self.conds(parts)?),
            Expr::Not(inner, _) => Cond::Not(Box::new(self.cond(inner)?)),
            Expr::Cmp {
                path, op, value, ..
            } => Cond::Cmp(FieldPath::new(path.segments.clone()), *op, value.clone()),
            Expr::In {
                path,
                negated,
                list,
                ..
            } => negate(
                *negated,
                Cond::In(FieldPath::new(path.segments.clone()), list.clone()),
            ),
            Expr::Exists { path, negated, .. } => negate(
                *negated,
                Cond::Exists(FieldPath::new(path.segments.clone())),
            ),
            Expr::Regex {
                path,
                negated,
                pattern,
                ..
            } => match regex::RegexBuilder::new(&pattern.value)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => negate(
                    *negated,
                    Cond::Regex(FieldPath::new(path.segments.clone()), re),
                ),
                Err(err) => {
                    let first_line = err
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    self.err(Code::BadRegex, pattern.span, format!("invalid regular expression: {first_line}"))
                        .help = Some("the syntax is that of Rust's `regex` crate; write `\\\\` for one backslash".into());
                    return None;
                }
            },
            Expr::Glob {
                path,
                negated,
                pattern,
                ..
            } => negate(
                *negated,
                Cond::Glob(
                    FieldPath::new(path.segments.clone()),
                    Glob::new(&pattern.value),
                ),
            ),
            Expr::EventGlob(s) => {
                let et = FieldPath::new(vec![ast::Segment::Field("event_type".into())]);
                let g = Glob::new(&s.value);
                if g.is_literal() {
                    Cond::Cmp(et, ast::CmpOp::Eq, ast::Literal::Str(s.value.clone()))
                } else {
                    Cond::Glob(et, g)
                }
            }
        })
    }

    fn conds(&mut self, parts: &[Expr]) -> Option<Vec<Cond>> {
        // Compile all parts so every bad regex is reported, then fail if any failed.
        let compiled: Vec<Option<Cond>> = parts.iter().map(|p| self.cond(p)).collect();
        compiled.into_iter().collect()
    }
}

fn negate(negated: bool, c: Cond) -> Cond {
    if negated {
        Cond::Not(Box::new(c))
    } else {
        c
    }
}
