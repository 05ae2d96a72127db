//! The code's layout holds: the API surfaces reach the product only through the use
//! cases (`src/chat`) and import none of the layers below them; no module of `src/`
//! reaches itself through its imports (no import circle, of two modules or more); and a
//! socket's close codes are written in one table (`src/api/close.rs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use regex::Regex;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// A file's code without its unit tests and comments (doc links are not imports).
fn code_of(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_api_surfaces_change_nothing_and_emit_nothing_but_through_the_use_cases() {
    let forbidden = Regex::new(r"\.(store|bus|hub|presence|limiter)\b|\bpublish\(").unwrap();
    let mut found = Vec::new();
    for path in rust_files(&src().join("api")) {
        for (line, text) in code_of(&path).lines().enumerate() {
            if forbidden.is_match(text) {
                found.push(format!("{}:{}: {}", path.display(), line + 1, text.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "src/api goes around src/chat:\n{}",
        found.join("\n")
    );
}

/// Which top-level modules of `src/` each one imports (`crate::x` anywhere in its
/// code, or `x` at the top of a `use crate::{…}` group).
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let reference = Regex::new(r"crate::([a-z_]+)").unwrap();
    let group = Regex::new(r"(?s)use crate::\{(.*?)\};").unwrap();
    let first_names = Regex::new(r"(?:^|,)\s*([a-z_]+)").unwrap();
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in rust_files(&root) {
        let relative = path.strip_prefix(&root).unwrap();
        let module = relative.iter().next().unwrap().to_string_lossy();
        let module = module.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let code = code_of(&path);
        let mut names: BTreeSet<String> = reference
            .captures_iter(&code)
            .map(|c| c[1].to_string())
            .collect();
        for block in group.captures_iter(&code) {
            // Only the top level of `use crate::{a, b::{c, d}}`: drop nested groups.
            let mut depth = 0;
            let top: String = block[1]
                .chars()
                .filter(|c| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0 && *c != '}'
                })
                .collect();
            names.extend(first_names.captures_iter(&top).map(|c| c[1].to_string()));
        }
        names.remove(&module);
        imports.entry(module).or_default().extend(names);
    }
    assert!(imports["api"].contains("chat"), "the scan sees imports");
    imports
}

#[test]
fn no_module_reaches_itself_through_its_imports() {
    let imports = module_imports();
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_string()];
        while let Some(module) = next.pop() {
            for used in imports.get(&module).into_iter().flatten() {
                if seen.insert(used.clone()) {
                    next.push(used.clone());
                }
            }
        }
        seen
    };
    let circles: Vec<String> = imports
        .keys()
        .filter(|module| reach(module).contains(*module))
        .map(|module| {
            let back: Vec<&String> = imports[module]
                .iter()
                .filter(|used| reach(used).contains(module))
                .collect();
            format!("{module} -> {back:?} -> {module}")
        })
        .collect();
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_api_imports_none_of_the_layers_below_the_use_cases() {
    let imports = module_imports();
    let below = ["app", "bus", "presence", "relay", "store"];
    let reached: Vec<&String> = imports["api"]
        .iter()
        .filter(|module| below.contains(&module.as_str()))
        .collect();
    assert!(reached.is_empty(), "src/api imports {reached:?}");
}

#[test]
fn no_close_code_is_written_outside_the_close_table() {
    // A close code in code: handed to a close, or paired with its reason text.
    let code =
        Regex::new(r#"(?i)close\w*(::\w+)?\(\s*[14][0-9]{3}\b|\b[14][0-9]{3}\s*,\s*""#).unwrap();
    for written in [
        r#"closer.close(4008, "too slow");"#,
        r#"return Some((1012, "service restart"));"#,
        r#"Close(Some((CloseCode::from(1000), reason)))"#,
    ] {
        assert!(code.is_match(written), "the scan would miss {written}");
    }
    let table = src().join("api").join("close.rs");
    let mut found = Vec::new();
    for dir in ["api", "chat", "relay"] {
        for path in rust_files(&src().join(dir)) {
            if path == table {
                continue;
            }
            for (line, text) in code_of(&path).lines().enumerate() {
                if code.is_match(text) {
                    found.push(format!("{}:{}: {}", path.display(), line + 1, text.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "close codes outside src/api/close.rs:\n{}",
        found.join("\n")
    );
}
