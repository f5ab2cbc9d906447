//! `flowcast fmt [--check] PATH...`: rewrite `.flow` files in the canonical layout
//! (`syntax::format`), or with `--check` only say which ones would change.

use super::ExitCode;
use crate::diagnostic::{render_human, SourceFile, SourceSet};
use crate::model;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct FmtArgs {
    /// Files or directories (every `*.flow` below a directory); `-` formats stdin to stdout.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Change nothing: list the files that are not formatted and exit 1 if there are any.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: FmtArgs) -> anyhow::Result<ExitCode> {
    if args.paths.len() == 1 && args.paths[0].as_os_str() == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("error: stdin: {e}");
            return Ok(ExitCode::Usage);
        }
        return Ok(match format_one("<stdin>", &text) {
            Some(out) => {
                if args.check && out != text {
                    eprintln!("<stdin> is not formatted");
                    ExitCode::InputErrors
                } else {
                    if !args.check {
                        std::io::stdout().write_all(out.as_bytes())?;
                    }
                    ExitCode::Ok
                }
            }
            None => ExitCode::InputErrors,
        });
    }
    let files = match model::collect_flow_files(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::Usage);
        }
    };
    let (mut changed, mut broken) = (0usize, 0usize);
    for path in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return Ok(ExitCode::Usage);
            }
        };
        let Some(out) = format_one(&path.display().to_string(), &text) else {
            broken += 1;
            continue;
        };
        if out == text {
            continue;
        }
        changed += 1;
        if args.check {
            println!("{}", path.display());
        } else if let Err(e) = std::fs::write(path, out) {
            eprintln!("error: {}: {e}", path.display());
            return Ok(ExitCode::Usage);
        }
    }
    let verb = if args.check {
        "would reformat"
    } else {
        "reformatted"
    };
    eprintln!(
        "fmt: {} file{}, {verb} {changed}{}",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        if broken > 0 {
            format!(", {broken} with syntax errors left as they are")
        } else {
            String::new()
        }
    );
    Ok(if broken > 0 || (args.check && changed > 0) {
        ExitCode::InputErrors
    } else {
        ExitCode::Ok
    })
}

/// The formatted text, or `None` after printing why the file cannot be formatted.
fn format_one(name: &str, text: &str) -> Option<String> {
    // What `check` refuses to read as a flow file (binary, too large) is not rewritten either.
    let comp = model::compile_files([(name.to_string(), text.as_bytes().to_vec())]);
    if let Some((file, d)) = comp
        .diagnostics
        .iter()
        .find(|(_, d)| d.code == crate::diagnostic::Code::UnreadableFile)
    {
        eprintln!("{}", render_human(&comp.sources, *file, d));
        return None;
    }
    match crate::syntax::format(text) {
        Ok(out) => Some(out),
        Err(diags) => {
            let mut set = SourceSet::default();
            let id = set.add(SourceFile::new(name, text));
            for d in diags {
                let d = crate::diagnostic::Diagnostic {
                    span: d.span.map(|s| crate::diagnostic::Span { file: id, ..s }),
                    ..d
                };
                eprintln!("{}", render_human(&set, id, &d));
            }
            None
        }
    }
}
