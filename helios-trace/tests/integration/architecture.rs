//! The rules of ARCHITECTURE.md ("Rules"), checked on the source: the graph of the top-level
//! modules of helios-trace/src (a folder or a file directly under src/) has no cycle, `model/`
//! imports none of the crates that do I/O or serve people, and `output/` does not import `sys/`.
//!
//! The check is a pure function over (path under src/, file text) pairs, so the unit tests
//! below show on small synthetic trees that it fails on a cycle and on a forbidden import, and
//! one test runs it on the real tree. No kernel, no root.
//!
//! What counts as an import: every `crate::x` path (in `use` lines, in grouped imports
//! `use crate::{x::A, y}`, and inline in code), and for external crates every path that starts
//! with the crate's name (`tokio::spawn`, `#[tokio::test]`, `use libc;`). Comments, strings and
//! character literals are skipped, so a doc link or a message naming a module is not an edge.
//! `super::` paths stay inside their top-level module and are not followed; the crate roots
//! (lib.rs, main.rs) are not modules of the graph.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// On since helios-trace/src is in the folders of ARCHITECTURE.md ("Where each stage lives"),
/// without import cycles (issue 14); off, the real-tree test prints what breaks the rules
/// instead of failing.
const ENFORCE_REAL_TREE: bool = true;

/// Crates `model/` must not import: it is pure state and statistics, fed by the stages that do
/// the I/O.
const MODEL_FORBIDDEN: [&str; 8] =
    ["aya", "tokio", "procfs", "rustix", "libc", "prometheus", "ratatui", "axum"];

/// Every rule the files break, one line each (empty: none).
fn violations(files: &[(&str, &str)]) -> Vec<String> {
    let modules: BTreeSet<&str> = files.iter().filter_map(|(path, _)| top_level_module(path)).collect();
    let mut graph: BTreeMap<&str, BTreeSet<String>> = modules.iter().map(|m| (*m, BTreeSet::new())).collect();
    let mut found = Vec::new();
    for (path, text) in files {
        let Some(from) = top_level_module(path) else { continue };
        let code = strip_comments_and_literals(text);
        for target in crate_paths(&code) {
            if target != from && modules.contains(target.as_str()) {
                graph.get_mut(from).expect("every module is a node").insert(target);
            }
        }
        if from == "model" {
            for name in MODEL_FORBIDDEN {
                if imports_external(&code, name) {
                    found.push(format!("model/ must not import {name}: {path} does"));
                }
            }
        }
        if from == "output" && crate_paths(&code).iter().any(|t| t == "sys") {
            found.push(format!("output/ must not import sys/: {path} does"));
        }
    }
    for cycle in cycles(&graph) {
        found.push(format!("import cycle between top-level modules: {}", cycle.join(", ")));
    }
    found
}

/// The top-level module a file under src/ belongs to: `engine.rs` -> engine, `bpf/loader.rs`
/// and `bpf/mod.rs` -> bpf; None for the crate roots and anything that is not Rust.
fn top_level_module(path: &str) -> Option<&str> {
    let path = path.strip_prefix("./").unwrap_or(path);
    match path.split_once('/') {
        Some((folder, _)) => path.ends_with(".rs").then_some(folder),
        None => match path.strip_suffix(".rs")? {
            "lib" | "main" => None,
            module => Some(module),
        },
    }
}

/// The code of a Rust file with comments, string literals and character literals blanked
/// (replaced by spaces; lines are kept), so that only code is searched.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"...", r#"..."#, br#"..."#: ends at a quote followed by as many hashes.
            i += hashes.prefix_len;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes.count).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes.count;
                    break;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    blank(&mut out, c);
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{1F600}'. The escaped character
            // may be the quote itself.
            i += 3;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3; // 'x'
        } else {
            // Code, and lifetimes ('a), which are code too.
            out.push(c);
            i += 1;
        }
    }
    out
}

struct RawStart {
    /// Characters up to and including the opening quote.
    prefix_len: usize,
    count: usize,
}

fn raw_string_start(chars: &[char], i: usize) -> Option<RawStart> {
    if i > 0 && is_ident_char(chars[i - 1]) {
        return None; // a `r` or `br` inside an identifier
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut count = 0;
    while chars.get(j) == Some(&'#') {
        count += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some(RawStart { prefix_len: j + 1 - i, count })
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifiers and punctuation of code, with `::` as one token.
fn tokens(code: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = code;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if is_ident_char(c) || c == '$' {
            let end =
                rest.char_indices().skip(1).find(|(_, c)| !is_ident_char(*c)).map_or(rest.len(), |(i, _)| i);
            tokens.push(&rest[..end]);
            rest = &rest[end..];
        } else if rest.starts_with("::") {
            tokens.push("::");
            rest = &rest[2..];
        } else {
            tokens.push(&rest[..c.len_utf8()]);
            rest = &rest[c.len_utf8()..];
        }
    }
    tokens
}

/// The top-level modules named by `crate::` paths: `crate::x::...`, and each first name of a
/// group `crate::{x::A, y, z::{...}}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let tokens = tokens(code);
    let mut found = BTreeSet::new();
    for (i, token) in tokens.iter().enumerate() {
        if !matches!(*token, "crate" | "$crate") || tokens.get(i + 1) != Some(&"::") {
            continue;
        }
        match tokens.get(i + 2) {
            Some(&"{") => {
                // First name of every item at depth 1 of the group.
                let mut depth = 0;
                let mut expect_name = true;
                for token in &tokens[i + 2..] {
                    match *token {
                        "{" => {
                            depth += 1;
                            if depth > 1 {
                                expect_name = false;
                            }
                        }
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        "," if depth == 1 => expect_name = true,
                        name if expect_name && depth == 1 => {
                            if name.chars().all(is_ident_char) && name != "self" {
                                found.insert(name.to_string());
                            }
                            expect_name = false;
                        }
                        _ => {}
                    }
                }
            }
            Some(name) if name.chars().all(is_ident_char) => {
                found.insert(name.to_string());
            }
            _ => {}
        }
    }
    found
}

/// Does the code use the external crate `name`: a path that starts with it (`name::...`, not
/// `other::name::...`), or `use name;` / `extern crate name`.
fn imports_external(code: &str, name: &str) -> bool {
    let tokens = tokens(code);
    tokens.iter().enumerate().any(|(i, token)| {
        if *token != name {
            return false;
        }
        let before = i.checked_sub(1).map(|j| tokens[j]);
        let after = tokens.get(i + 1).copied();
        let starts_path = after == Some("::") && !matches!(before, Some("::" | "."));
        let used_alone = before == Some("use");
        let extern_crate = before == Some("crate") && i >= 2 && tokens[i - 2] == "extern";
        starts_path || used_alone || extern_crate
    })
}

/// The cycles of the graph: its strongly connected components of more than one module
/// (Tarjan), each sorted, in a stable order.
fn cycles(graph: &BTreeMap<&str, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<&'g str, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        components: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in &self.graph[node] {
                let next = self.graph.get_key_value(next.as_str()).expect("edges lead to modules").0;
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.to_string());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.components.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node) {
            tarjan.visit(node);
        }
    }
    tarjan.components.sort();
    tarjan.components
}

/// Every .rs file under `dir`, as (path relative to `root` with `/`, text).
fn read_tree(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap();
            let relative: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.push((relative.join("/"), fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn the_real_tree_keeps_the_rules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    files.sort();
    let pairs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let modules: BTreeSet<&str> = pairs.iter().filter_map(|(p, _)| top_level_module(p)).collect();
    assert!(modules.len() >= 5, "read the tree: {modules:?}");
    let found = violations(&pairs);
    if ENFORCE_REAL_TREE {
        assert!(found.is_empty(), "helios-trace/src breaks ARCHITECTURE.md's rules:\n{}", found.join("\n"));
    } else if !found.is_empty() {
        eprintln!(
            "architecture: not enforced yet (ENFORCE_REAL_TREE), helios-trace/src breaks:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn an_acyclic_tree_with_allowed_imports_passes() {
    let files = [
        ("lib.rs", "pub mod cli; pub mod model; pub mod output; pub mod sys;"),
        ("main.rs", "fn main() { helios_trace::cli::run() }"),
        ("cli/mod.rs", "use crate::{model::Event, output::render};\nuse clap::Parser;"),
        ("model/mod.rs", "pub mod fdtable;"),
        ("model/fdtable.rs", "use std::collections::HashMap;\nuse super::Event;"),
        ("output/report.rs", "use crate::model::fdtable::FdTable;\nuse serde::Serialize;"),
        ("sys/loader.rs", "use aya::Ebpf;\nuse crate::model::Event;\nuse libc::c_int;"),
    ];
    assert_eq!(violations(&files), Vec::<String>::new());
}

#[test]
fn a_cycle_between_top_level_modules_fails() {
    let files = [
        ("engine.rs", "use crate::report::Corrections;"),
        ("report.rs", "fn f() -> crate::engine::ExitedProcess { loop {} }"),
        ("trend.rs", "use crate::{fd::FdKind, report::human_duration};"),
        ("fd.rs", ""),
    ];
    assert_eq!(violations(&files), ["import cycle between top-level modules: engine, report"]);
}

#[test]
fn a_cycle_through_a_folder_and_a_grouped_import_fails() {
    let files = [
        ("bpf/mod.rs", "pub mod privileges;"),
        ("bpf/privileges.rs", "use crate::{\n    cli::{self, TraceArgs},\n    fd,\n};"),
        ("cli.rs", "use crate::session::Tracing;"),
        ("session.rs", "pub fn start() { crate::bpf::Tracer::start(); }"),
        ("fd.rs", ""),
    ];
    assert_eq!(violations(&files), ["import cycle between top-level modules: bpf, cli, session"]);
}

#[test]
fn comments_strings_and_super_are_not_imports() {
    let files = [
        ("a.rs", "use crate::b::X;"),
        (
            "b.rs",
            "//! See [`crate::a`].\n/* crate::a::Y */\nconst S: &str = \"crate::a::Z\";\nconst R: &str = r#\"crate::a\"#;\nconst C: char = '\\'';\nfn f<'a>(x: &'a str) {}\nmod tests { use super::*; }",
        ),
    ];
    assert_eq!(violations(&files), Vec::<String>::new());
}

#[test]
fn model_importing_an_io_crate_fails() {
    let files = [
        ("model/fdtable.rs", "use std::fmt;\nuse tokio::sync::watch;"),
        ("model/history.rs", "fn pid() -> u32 { unsafe { libc::getpid() as u32 } }"),
        ("model/trend.rs", "#[cfg(test)]\nmod tests {\n    #[tokio::test]\n    async fn t() {}\n}"),
        ("model/sites.rs", "use crate::sys::procfs_facts; // not the procfs crate\nuse prometheus_like::X;"),
        ("sys/mod.rs", ""),
    ];
    assert_eq!(
        violations(&files),
        [
            "model/ must not import tokio: model/fdtable.rs does",
            "model/ must not import libc: model/history.rs does",
            "model/ must not import tokio: model/trend.rs does",
        ]
    );
}

#[test]
fn output_importing_sys_fails() {
    let files = [
        ("output/metrics.rs", "use crate::{model::sites::Sites, sys::proc::usage};"),
        ("output/report.rs", "use crate::model::fdtable::FdTable;"),
        ("model/mod.rs", ""),
        ("sys/mod.rs", "use crate::model::Event;"),
    ];
    assert_eq!(violations(&files), ["output/ must not import sys/: output/metrics.rs does"]);
}
