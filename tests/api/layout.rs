//! The code's layout holds: the API surfaces reach the product only through the use
//! cases (`src/chat`), and no two modules of `src/` import each other, but for the poem
//! state pattern (`app` builds the routes of `api`, whose handlers read `app`'s state).

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

#[test]
fn no_two_modules_import_each_other_but_app_and_api() {
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
    let mut circles = Vec::new();
    for (module, uses) in &imports {
        for other in uses {
            let back = imports.get(other).is_some_and(|u| u.contains(module));
            let state_pattern = [module.as_str(), other.as_str()] == ["api", "app"];
            if back && module < other && !state_pattern {
                circles.push(format!("{module} <-> {other}"));
            }
        }
    }
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_string()];
        while let Some(module) = next.pop() {
            for used in imports.get(&module).into_iter().flatten() {
                if !(module == "app" && used == "api") && seen.insert(used.clone()) {
                    next.push(used.clone());
                }
            }
        }
        seen
    };
    for module in imports.keys() {
        if module != "api" && reach(module).contains(module) {
            circles.push(format!("{module} reaches itself"));
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:?}");
}
