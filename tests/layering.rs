//! The structure of src/ as a test (docs/design.md, "Layers"):
//!
//! - folders depend one way: each uses only the folders before it in `LAYERS` (the command line,
//!   `src/main.rs` and `src/cli/`, may use them all);
//! - no cycle among the modules (files), a folder's `mod.rs` being its face: the edges between it
//!   and its own children are the folder's inside, not a cycle;
//! - `clap` only in the command line, `mpi::` only under `comm/`;
//! - no file over 500 lines, no function over 60 (tests excluded).
//!
//! References are read from the code with comments, string literals and `#[cfg(test)]` items
//! removed: `crate::a::b`, `super::x`, `self::x`, and a module's bare references to its own
//! children, each resolved to the longest module path that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 13] = [
    "util", "diag", "comm", "schedule", "netspec", "config", "model", "data", "plan", "record", "train",
    "perf", "report",
];
const MAX_FILE_LINES: usize = 500;
const MAX_FN_LINES: usize = 60;

struct Module {
    /// `comm::guard`, `plan` (for plan/mod.rs), `cli::plan`, `main`.
    name: String,
    file: PathBuf,
    /// The code without comments, strings and tests.
    code: String,
    /// The original text without `#[cfg(test)]` items (for line counts and function lengths).
    text: String,
}

fn folder(name: &str) -> &str {
    name.split("::").next().unwrap_or(name)
}

fn is_command_line(name: &str) -> bool {
    name == "main" || folder(name) == "cli"
}

/// `text` without its `#[cfg(test)]` items (the attribute through the end of its braces, or
/// through its `;` for an item without a body, such as `mod tests;`).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(open) = after.find(['{', ';']) else {
            rest = "";
            break;
        };
        if after[open..].starts_with(';') {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (k, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `text` with comments and string and character literals blanked out.
fn code_only(text: &str) -> String {
    let (b, mut out, mut i) = (text.as_bytes(), String::with_capacity(text.len()), 0);
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' || (b[i] == b'r' && b[i..].starts_with(b"r#\"")) {
            let raw = b[i] == b'r';
            i += if raw { 3 } else { 1 };
            while i < b.len() && !(b[i] == b'"' && (!raw || b.get(i + 1) == Some(&b'#'))) {
                i += if !raw && b[i] == b'\\' { 2 } else { 1 };
            }
            i += if raw { 2 } else { 1 };
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            out.push_str("' '");
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().to_string()).collect();
                if parts.last().is_some_and(|l| l == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] {
                    continue;
                }
                let text = without_tests(&std::fs::read_to_string(&p).unwrap());
                out.push(Module {
                    name: parts.join("::"),
                    file: p,
                    code: code_only(&text),
                    text,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The modules `m` refers to, each with the first text that refers to it.
fn references(m: &Module, names: &BTreeSet<String>) -> BTreeMap<String, String> {
    let parent: Vec<&str> = m.name.split("::").collect();
    let parent = parent[..parent.len() - 1].join("::");
    let mut found = BTreeMap::new();
    let path_at = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .to_string()
            })
            .take_while(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_lowercase()))
            .collect()
    };
    let mut add = |base: &str, rest: &str, text: &str| {
        let mut path: Vec<String> = if base.is_empty() {
            Vec::new()
        } else {
            base.split("::").map(String::from).collect()
        };
        path.extend(path_at(rest));
        while !path.is_empty() {
            let cand = path.join("::");
            if names.contains(&cand) {
                if cand != m.name {
                    found.entry(cand).or_insert_with(|| text.trim().to_string());
                }
                return;
            }
            path.pop();
        }
    };
    let code = &m.code;
    for (prefix, base) in [
        ("crate::", String::new()),
        ("super::", parent.clone()),
        ("self::", m.name.clone()),
    ] {
        for (i, _) in code.match_indices(prefix) {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let line_end = rest.find('\n').unwrap_or(rest.len());
            if rest.starts_with('{') {
                let close = rest.find('}').unwrap_or(rest.len());
                for item in rest[1..close].split(',') {
                    add(&base, item.trim(), &format!("{prefix}{{{}}}", &rest[1..close]));
                }
            } else {
                add(
                    &base,
                    &rest[..end],
                    &format!("{prefix}{}", &rest[..line_end.min(80)]),
                );
            }
        }
    }
    // Bare references to this module's own children (`guard::enter` in comm/mod.rs).
    for child in names.iter().filter(|n| {
        n.strip_prefix(&format!("{}::", m.name))
            .is_some_and(|r| !r.contains("::"))
    }) {
        let short = child.rsplit("::").next().unwrap();
        let pat = format!("{short}::");
        if code.match_indices(&pat).any(|(i, _)| {
            let before = code[..i].chars().last();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        }) {
            found
                .entry(child.clone())
                .or_insert_with(|| format!("{short}::..."));
        }
    }
    found
}

/// The mutual edges between a folder's `mod.rs` and its own children: the folder's inside.
fn inside_a_folder(a: &str, b: &str) -> bool {
    let child_of = |c: &str, p: &str| {
        c.strip_prefix(&format!("{p}::"))
            .is_some_and(|r| !r.contains("::"))
    };
    child_of(a, b) || child_of(b, a)
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w);
                let lw = t.low[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w.as_str()) {
                let iw = t.index[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                t.out.push(c);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Functions of `text` longer than `MAX_FN_LINES`: (line, name, length).
fn long_functions(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let t = t
            .strip_prefix("pub ")
            .or_else(|| t.strip_prefix("pub(crate) "))
            .or_else(|| t.strip_prefix("pub(super) "))
            .unwrap_or(t);
        let t = t
            .strip_prefix("unsafe ")
            .or_else(|| t.strip_prefix("const "))
            .unwrap_or(t);
        let Some(rest) = t.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened, mut j) = (0i64, false, i);
        while j < lines.len() {
            let c = code_only(lines[j]);
            depth += c.matches('{').count() as i64 - c.matches('}').count() as i64;
            opened |= c.contains('{');
            if (opened && depth <= 0) || (!opened && c.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        if opened && j - i + 1 > MAX_FN_LINES {
            out.push((i + 1, name, j - i + 1));
        }
    }
    out
}

/// Everything in `src` that breaks the rules, one line each.
fn violations(src: &Path) -> Vec<String> {
    let mods = modules(src);
    let names: BTreeSet<String> = mods.iter().map(|m| m.name.clone()).collect();
    let mut out = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &mods {
        let rel = m.file.strip_prefix(src).unwrap().display().to_string();
        let from = LAYERS.iter().position(|l| *l == folder(&m.name));
        if from.is_none() && !is_command_line(&m.name) {
            out.push(format!(
                "src/{rel}: folder `{}` is in no layer (tests/layering.rs LAYERS)",
                folder(&m.name)
            ));
        }
        for (target, text) in references(m, &names) {
            let to = LAYERS.iter().position(|l| *l == folder(&target));
            if let (Some(f), Some(t)) = (from, to) {
                if t > f {
                    out.push(format!(
                        "src/{rel}: uses {target} (`{text}`), but {} is above {} (a folder uses only the ones before it)",
                        folder(&target),
                        folder(&m.name)
                    ));
                }
            }
            if to.is_none() && !is_command_line(&m.name) && is_command_line(&target) {
                out.push(format!("src/{rel}: uses the command line ({target})"));
            }
            if !inside_a_folder(&m.name, &target) {
                edges.entry(m.name.clone()).or_default().insert(target);
            }
        }
        if m.code.contains("clap") && !is_command_line(&m.name) {
            out.push(format!(
                "src/{rel}: uses clap (only src/main.rs and src/cli/ may)"
            ));
        }
        if m.code.contains("mpi::") && folder(&m.name) != "comm" {
            out.push(format!("src/{rel}: uses mpi:: (only src/comm/ may)"));
        }
        if reads_the_config(m) {
            out.push(format!(
                "src/{rel}: uses Config (the trainer reads its plan; only train::launch builds it from the config)"
            ));
        }
        let n = m.text.lines().count();
        if n > MAX_FILE_LINES {
            out.push(format!(
                "src/{rel}: {n} lines without its tests (at most {MAX_FILE_LINES})"
            ));
        }
        for (line, name, len) in long_functions(&m.text) {
            out.push(format!(
                "src/{rel}:{line}: fn {name} has {len} lines (at most {MAX_FN_LINES})"
            ));
        }
    }
    for c in cycles(&edges) {
        out.push(format!("module cycle: {}", c.join(" -> ")));
    }
    out
}

/// A module of `train` other than its construction (`train::launch`) naming the config's
/// `Config` (the config's enums, such as `OptimizerKind`, are data the plan hands on).
fn reads_the_config(m: &Module) -> bool {
    let named = m
        .code
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|w| w == "Config");
    folder(&m.name) == "train" && m.name != "train::launch" && named
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn src_keeps_its_layers() {
    let v = violations(&src());
    assert!(v.is_empty(), "{} violation(s):\n{}", v.len(), v.join("\n"));
}

/// The checker itself: a copy of src/ with one upward `use`, one cycle and a clap import added
/// fails with each of them named.
#[test]
fn an_upward_use_a_cycle_and_clap_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("src");
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let to = copy.join(e.path().strip_prefix(src()).unwrap());
            if e.path().is_dir() {
                std::fs::create_dir_all(&to).unwrap();
                stack.push(e.path());
            } else {
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(e.path(), &to).unwrap();
            }
        }
    }
    let append = |file: &str, text: &str| {
        let p = copy.join(file);
        let body = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{text}\n{body}")).unwrap();
    };
    append("diag/flight.rs", "use crate::train::trainer::Trainer;");
    append("util/format.rs", "use crate::util::machine::Cpu;");
    append("util/machine.rs", "use crate::util::format::grouped;");
    append("record/peak.rs", "use clap::Args;");
    let v = violations(&copy).join("\n");
    assert!(v.contains("src/diag/flight.rs: uses train::trainer"), "{v}");
    assert!(v.contains("module cycle: util::format -> util::machine"), "{v}");
    assert!(v.contains("src/record/peak.rs: uses clap"), "{v}");
}
