//! The collector's modules import each other one way only (data flows probe → drain → flow
//! table → export → sinks; statistics, logs and metrics read the pipeline, never the other way
//! round). This reads the sources and fails if a `crate::` import cycle between top-level
//! modules reappears (e.g. `run ↔ metrics`, `config → metrics → run → config`). The sinks
//! crate is held to the same rule.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Drops `//` comments (doc comments name modules in links, which are not imports).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first identifier of each item of a `{a::b, c, d::{e, f}}` group starting at `s[0] == '{'`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut item_start) = (0usize, true);
    let mut ident = String::new();
    for c in s.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                }
            }
            '}' => {
                if depth == 1 && !ident.is_empty() {
                    heads.push(std::mem::take(&mut ident));
                }
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                if !ident.is_empty() {
                    heads.push(std::mem::take(&mut ident));
                }
                item_start = true;
            }
            c if depth == 1 && item_start && (c.is_alphanumeric() || c == '_') => ident.push(c),
            c if depth == 1 && item_start && !c.is_whitespace() => {
                if !ident.is_empty() {
                    heads.push(std::mem::take(&mut ident));
                }
                item_start = false;
            }
            c if depth == 1 && c.is_whitespace() && !ident.is_empty() => {
                heads.push(std::mem::take(&mut ident));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Names that `text` reaches through `crate::` (the first path segment after it).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let code = strip_comments(text);
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `flowlens_crate::x` is not `crate::x`.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if rest.starts_with('{') {
            out.extend(group_heads(rest));
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

/// Top-level module → the other top-level modules it imports, from `(path relative to src,
/// text)` pairs. `lib.rs` and `main.rs` are the crate root, not modules.
fn graph_of(files: &[(String, String)]) -> Graph {
    let module = |rel: &str| -> Option<String> {
        let first = rel.split('/').next()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main")).then(|| name.to_string())
    };
    let mut g = Graph::new();
    for (rel, _) in files {
        if let Some(m) = module(rel) {
            g.entry(m).or_default();
        }
    }
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for (rel, text) in files {
        let Some(m) = module(rel) else { continue };
        for r in crate_refs(text) {
            if r != m && modules.contains(&r) {
                g.entry(m.clone()).or_default().insert(r);
            }
        }
    }
    g
}

/// A cycle, as the modules along it (first repeated at the end), if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        g: &'a Graph,
        m: &'a str,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => return None,
            Some(false) => {
                let at = path.iter().position(|p| *p == m).unwrap_or(0);
                let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(m, false);
        path.push(m);
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m, true);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if let Some(c) = visit(g, m, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Every `.rs` file under `src`, as (path relative to `src`, text).
fn sources(src: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn assert_acyclic(src: &Path) -> Graph {
    let files = sources(src);
    assert!(files.len() > 5, "{}: sources not found", src.display());
    let g = graph_of(&files);
    if let Some(c) = find_cycle(&g) {
        panic!(
            "{}: import cycle between modules: {}",
            src.display(),
            c.join(" → ")
        );
    }
    g
}

#[test]
fn collector_modules_have_no_import_cycle() {
    let g = assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The leaf really is a leaf, and the pipeline does not know who observes it.
    assert_eq!(g["stats"], BTreeSet::new(), "stats imports nothing");
    for m in ["metrics", "observe", "run", "config"] {
        assert!(
            !g["pipeline"].contains(m),
            "pipeline imports {m}: {:?}",
            g["pipeline"]
        );
    }
    assert!(g["metrics"].contains("stats"), "{:?}", g["metrics"]);
}

#[test]
fn sinks_modules_have_no_import_cycle() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../sinks/src"));
}

/// The check can fail: the cycles this layout removed are found in sources that have them.
#[test]
fn finds_the_cycles_it_guards_against() {
    let f = |path: &str, text: &str| (path.to_string(), text.to_string());
    // `run ↔ metrics`, as before the split (a grouped import with a nested path).
    let before = [
        f("lib.rs", "pub mod metrics;\npub mod run;\npub mod drain;"),
        f(
            "metrics.rs",
            "use crate::{drain::Accounting, run::Pipeline, run::Totals};",
        ),
        f(
            "run.rs",
            "use crate::{\n    drain::{Accounting, Drainer},\n    ifaces, metrics,\n};",
        ),
        f("drain.rs", "use crate::sys::x;"),
    ];
    let c = find_cycle(&graph_of(&before)).expect("run ↔ metrics is a cycle");
    assert!(
        c.contains(&"run".into()) && c.contains(&"metrics".into()),
        "{c:?}"
    );
    // `config → metrics → run → config`, through a plain path and a submodule file.
    let three = [
        f("config.rs", "value_parser = crate::metrics::parse_listen)"),
        f("metrics/mod.rs", "use crate::run::Totals;"),
        f("run.rs", "use crate::{config::RunConfig};"),
    ];
    assert_eq!(
        find_cycle(&graph_of(&three)).map(|c| c.len()),
        Some(4),
        "three modules and back"
    );
    // Comments, doc links and other crates' paths are not imports.
    let fine = [
        f(
            "a.rs",
            "// use crate::b;\n/// see [`crate::b`]\nuse flowlens_crate::b;",
        ),
        f("b.rs", "use crate::a;"),
    ];
    assert_eq!(find_cycle(&graph_of(&fine)), None);
}
