//! The repository stands alone: every "SPEC §N" the code and docs cite names a section of
//! docs/SPEC.md, no document sends a reader to a file the repository does not have, and
//! the README's code tour names every file under `src/`. These tests read files only; they
//! need no Postgres or NATS.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use regex::Regex;

/// Top-level folders whose paths the documents may name; a token starting with one of
/// them is taken for a repository path and must exist.
const TOP_LEVEL_DIRS: &[&str] = &[
    "src/",
    "tests/",
    "docs/",
    "deploy/",
    "k8s/",
    "bench/",
    "fuzz/",
    "examples/",
    "clients/",
    ".ci/",
];

/// (document, path prefix) pairs that may name what the repository does not have yet.
/// None today: the TypeScript SDK of SPEC §13 is in `clients/typescript/` now.
const NOT_YET: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path, keep));
        } else if keep(&path) {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .is_some_and(|e| extensions.iter().any(|x| e == *x))
}

/// The project's own Markdown: the top-level documents and everything in docs/.
fn markdown_documents() -> Vec<PathBuf> {
    let root = root();
    let mut files: Vec<PathBuf> = [
        "README.md",
        "BENCHMARKS.md",
        "CONTRIBUTING.md",
        "CHANGELOG.md",
        "SECURITY.md",
    ]
    .iter()
    .map(|name| root.join(name))
    .filter(|path| path.exists())
    .collect();
    files.extend(files_under(&root.join("docs"), &|p| {
        has_extension(p, &["md"])
    }));
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A file's text to check, as (line number, line) pairs: all of a Markdown document, only
/// the doc comments (`//!`, `///`) of a Rust file.
fn prose_lines(path: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap();
    let lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
    if has_extension(path, &["rs"]) {
        lines
            .filter_map(|(n, line)| {
                let line = line.trim_start();
                let doc = line
                    .strip_prefix("//!")
                    .or_else(|| line.strip_prefix("///"))?;
                Some((n, doc.to_string()))
            })
            .collect()
    } else {
        lines.map(|(n, line)| (n, line.to_string())).collect()
    }
}

/// Runs `pattern` over the lines joined (so a phrase may wrap) and calls `found` with the
/// line number of each match's start and its captures.
fn each_match(
    lines: &[(usize, String)],
    pattern: &Regex,
    mut found: impl FnMut(usize, &regex::Captures),
) {
    let mut joined = String::new();
    let mut starts = Vec::new();
    for (n, line) in lines {
        starts.push((joined.len(), *n));
        joined.push_str(line);
        joined.push('\n');
    }
    for captures in pattern.captures_iter(&joined) {
        let at = captures.get(0).unwrap().start();
        let line = starts
            .iter()
            .rev()
            .find(|(start, _)| *start <= at)
            .map_or(0, |(_, n)| *n);
        found(line, &captures);
    }
}

/// The numbers docs/SPEC.md gives its sections and guarantees: "5", "1.3", …
fn spec_sections() -> BTreeSet<String> {
    let spec = fs::read_to_string(root().join("docs/SPEC.md")).unwrap();
    let heading = Regex::new(r"(?m)^#{2,4} (\d+(?:\.\d+)?)\.? ").unwrap();
    heading
        .captures_iter(&spec)
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn docs_spec_numbers_every_section_and_guarantee_the_code_relies_on() {
    let sections = spec_sections();
    let expected = (1..=18)
        .map(|n| n.to_string())
        .chain((1..=7).map(|m| format!("1.{m}")));
    let missing: Vec<String> = expected.filter(|n| !sections.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "docs/SPEC.md has no heading for {missing:?}"
    );
}

#[test]
fn every_spec_reference_in_the_code_names_a_section_of_docs_spec() {
    let sections = spec_sections();
    let root = root();
    let text_file = |p: &Path| !p.starts_with(root.join("tests/fixtures"));
    let mut files = files_under(&root.join("src"), &|p| has_extension(p, &["rs"]));
    files.extend(files_under(&root.join("tests"), &text_file));
    files.extend(markdown_documents());
    let cited = Regex::new(r"SPEC §(\d+(?:\.\d+)?)").unwrap();
    // docs/SPEC.md refers to its own sections without the "SPEC" prefix.
    let own = Regex::new(r"§(\d+(?:\.\d+)?)").unwrap();
    let spec = root.join("docs/SPEC.md");
    let mut unresolved = Vec::new();
    for path in files {
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // not text
        };
        let pattern = if path == spec { &own } else { &cited };
        for (n, line) in text.lines().enumerate() {
            for c in pattern.captures_iter(line) {
                if !sections.contains(&c[1]) {
                    unresolved.push(format!("{}:{}: §{}", relative(&path), n + 1, &c[1]));
                }
            }
        }
    }
    assert!(
        unresolved.is_empty(),
        "these cite a section docs/SPEC.md does not have:\n{}",
        unresolved.join("\n")
    );
}

/// Whether a path some document names exists: relative paths from the document's folder
/// (Markdown links) or from the repository's root (paths in backticks and prose).
fn exists(target: &str, from: &Path) -> bool {
    let target = target.trim_end_matches('/');
    from.parent().unwrap().join(target).exists() || root().join(target).exists()
}

/// The anchors GitHub gives a Markdown document's headings: lower case, punctuation
/// dropped, spaces as hyphens (a repeated heading's `-1` suffix is not needed yet).
fn anchors(document: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(document).unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// A path named in prose, without what surrounds it in a sentence: trailing punctuation
/// and a `:line` or `:line-line` suffix.
fn clean(token: &str) -> String {
    let line_suffix = Regex::new(r":\d+(-\d+)?$").unwrap();
    let token = token.trim_end_matches(['.', ',', ';', ':', ')', '\'', '"', '`']);
    line_suffix.replace(token, "").into_owned()
}

#[test]
fn no_file_names_a_document_the_repository_does_not_have() {
    let root = root();
    let mut files = markdown_documents();
    files.extend(files_under(&root.join("src"), &|p| {
        has_extension(p, &["rs"])
    }));

    let link = Regex::new(r"\]\(([^)\s]+)\)|(?m)^\[[^\]]+\]:\s*(\S+)").unwrap();
    let dirs = TOP_LEVEL_DIRS
        .iter()
        .map(|d| regex::escape(d))
        .collect::<Vec<_>>()
        .join("|");
    let repo_path = Regex::new(&format!(r#"(?:^|[\s(`"'\[])((?:{dirs})[^\s`"'()\[\]]*)"#)).unwrap();
    let top_level_file = Regex::new(r"`([A-Za-z0-9_-]+\.(?:md|toml|yml|yaml)|LICENSE)`").unwrap();
    let outside = Regex::new(r"\.\./shared|beside\s+(?:the|this)\s+repository").unwrap();

    let mut broken = Vec::new();
    for path in &files {
        let lines = prose_lines(path);
        let mut report = |line: usize, what: &str| {
            broken.push(format!("{}:{}: {}", relative(path), line, what));
        };
        each_match(&lines, &link, |line, c| {
            let target = c.get(1).or_else(|| c.get(2)).unwrap().as_str();
            if target.contains("://") || target.starts_with("mailto:") {
                return;
            }
            if let Some(anchor) = target.strip_prefix('#') {
                if !anchors(path).contains(anchor) {
                    report(
                        line,
                        &format!("link to a heading this page lacks: {target}"),
                    );
                }
                return;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            if !exists(file, path) {
                report(line, &format!("link to {target}"));
            } else if !anchor.is_empty() && file.ends_with(".md") {
                // Beside the linking file, or (a setting's doc, which the README's
                // table repeats) from the repository's root.
                let beside = path.parent().unwrap().join(file);
                let document = if beside.exists() {
                    beside
                } else {
                    root.join(file)
                };
                if !anchors(&document).contains(anchor) {
                    report(line, &format!("link to a heading {file} lacks: {target}"));
                }
            }
        });
        each_match(&lines, &repo_path, |line, c| {
            let target = clean(&c[1]);
            let target = target.split('#').next().unwrap();
            // `tests/api/<name>.rs`, `src/**/*.rs`, `/ws/...`: a kind of path, not a path.
            let placeholder = target.contains(['*', '<', '{', '…']) || target.contains("...");
            let not_yet = NOT_YET
                .iter()
                .any(|(doc, prefix)| relative(path) == *doc && target.starts_with(prefix));
            if placeholder || not_yet {
                return;
            }
            if !exists(target, &root) {
                report(line, &format!("path {target}"));
            }
        });
        each_match(&lines, &top_level_file, |line, c| {
            if !exists(&c[1], path) {
                report(line, &format!("file {}", &c[1]));
            }
        });
        each_match(&lines, &outside, |line, c| {
            report(line, &format!("points outside the repository: {:?}", &c[0]));
        });
    }
    assert!(
        broken.is_empty(),
        "these name what the repository does not have:\n{}",
        broken.join("\n")
    );
}

/// The README's code tour: from its heading to the next one.
fn code_tour() -> String {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("## Code tour")
        .expect("README.md has a code tour");
    let rest = &readme[start + 2..];
    let end = rest.find("\n## ").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

#[test]
fn the_code_tour_names_every_file_under_src() {
    let tour = code_tour();
    // The tour's items: its bullets (with their continuation lines) and table rows.
    let mut items: Vec<String> = Vec::new();
    for line in tour.lines() {
        let starts_item = line.starts_with("- ") || line.starts_with('|') || line.is_empty();
        match items.last_mut() {
            Some(item) if !starts_item => {
                item.push(' ');
                item.push_str(line.trim());
            }
            _ => items.push(line.to_string()),
        }
    }
    let src = root().join("src");
    let mut missing = Vec::new();
    for file in files_under(&src, &|p| has_extension(p, &["rs"])) {
        let path = file.strip_prefix(&src).unwrap().display().to_string();
        // Named from src/ ("store/rows.rs"), or inside an item that opens with one of the
        // file's folders (`src/store/`: … `rows.rs` …).
        let parts: Vec<&str> = path.split('/').collect();
        let named = items.iter().any(|item| {
            item.contains(&format!("`{path}`"))
                || item.contains(&format!("`src/{path}`"))
                || (1..parts.len()).any(|depth| {
                    let folder = format!("`src/{}/`", parts[..depth].join("/"));
                    // A file in a subfolder may be named by its own name once the item
                    // has named the subfolder (`commit/` … `batch.rs`); a folder's mod.rs
                    // by the folder (`web/`).
                    let (name, subfolders) = parts[depth..].split_last().unwrap();
                    let by_name = if subfolders.is_empty() {
                        item.contains(&format!("`{name}`"))
                    } else {
                        item.contains(&format!("`{}/`", subfolders.join("/")))
                            && (*name == "mod.rs" || item.contains(&format!("`{name}`")))
                    };
                    let rest = parts[depth..].join("/");
                    item.trim_start_matches("- ").starts_with(&folder)
                        && (item.contains(&format!("`{rest}`")) || by_name)
                })
        });
        if !named {
            missing.push(format!("src/{path}"));
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's code tour does not name:\n{}",
        missing.join("\n")
    );
}
