//! The docs agree with the code: `docs/limits.md` has a row for every `…_MAX…` constant of the
//! crates, with the value the code gives it, and no row for a constant that is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tools that are not the product: their bounds are theirs.
const NOT_THE_PRODUCT: &[&str] = &["fuzz", "sim", "test-support"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `NAME = value` of every `const NAME…_MAX…: T = value;` in the crates' sources, value with
/// its white space collapsed.
fn limits_in_code(root: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).expect("crates").flatten() {
        let name = krate.file_name().to_string_lossy().to_string();
        if !NOT_THE_PRODUCT.contains(&name.as_str()) {
            rust_files(&krate.path().join("src"), &mut files);
        }
    }
    let mut limits = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        for (at, _) in text.match_indices("const ") {
            let rest = &text[at + "const ".len()..];
            let Some(colon) = rest.find(':') else { continue };
            let name = &rest[..colon];
            if !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') || !name.contains("_MAX")
            {
                continue;
            }
            let Some(end) = rest.find(';') else { continue };
            let Some(equals) = rest[..end].find('=') else { continue };
            let value = rest[equals + 1..end].split_whitespace().collect::<Vec<_>>().join(" ");
            limits.insert(name.to_string(), value);
        }
    }
    limits
}

/// `NAME = value` of every row of the limits table (its last column).
fn limits_in_docs(table: &str) -> BTreeMap<String, String> {
    table
        .lines()
        .filter_map(|line| line.trim_end().strip_suffix("` |"))
        .filter_map(|line| line.rsplit_once("| `").map(|(_, constant)| constant))
        .filter_map(|constant| constant.split_once(" = "))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[test]
fn the_limits_table_has_every_limit_of_the_code_with_its_value() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let code = limits_in_code(&root);
    assert!(code.len() > 40, "the scan found the constants: {code:?}");
    let table = std::fs::read_to_string(root.join("docs/limits.md")).expect("docs/limits.md");
    let docs = limits_in_docs(&table);
    let missing: Vec<String> =
        code.iter().filter(|(name, _)| !docs.contains_key(*name)).map(|(n, v)| format!("{n} = {v}")).collect();
    assert!(missing.is_empty(), "docs/limits.md has no row for: {missing:#?}");
    let differ: Vec<String> = code
        .iter()
        .filter_map(|(name, value)| {
            docs.get(name).filter(|shown| *shown != value).map(|shown| format!("{name}: code {value}, docs {shown}"))
        })
        .collect();
    assert!(differ.is_empty(), "docs/limits.md shows other values: {differ:#?}");
    let gone: Vec<&String> = docs.keys().filter(|name| name.contains("_MAX") && !code.contains_key(*name)).collect();
    assert!(gone.is_empty(), "docs/limits.md lists constants the code no longer has: {gone:?}");
}

#[test]
fn a_row_is_read_as_name_and_value() {
    let docs =
        limits_in_docs("| a | b | — | `STEPS_MAX = 100` |\n| x | y | z | `WAIT_MAX = Duration::from_secs(60)` |\n");
    assert_eq!(docs.get("STEPS_MAX").map(String::as_str), Some("100"));
    assert_eq!(docs.get("WAIT_MAX").map(String::as_str), Some("Duration::from_secs(60)"));
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link of the repository's Markdown reaches a file of the repository, and a
/// `#anchor` a heading of that file: the docs never send a reader to something that is not there.
#[test]
fn every_relative_link_of_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md"), root.join("deploy/README.md")];
    for dir in ["docs", "examples/shop", "examples/onboarding", "examples/location"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("dir").flatten() {
            if entry.path().extension().is_some_and(|e| e == "md") {
                pages.push(entry.path());
            }
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() { page.clone() } else { page.parent().expect("dir").join(file) };
            if !file.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if !fragment.is_empty() && file.is_file() {
                let linked = std::fs::read_to_string(&file).unwrap_or_default();
                let anchors: Vec<String> = linked
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|l| anchor(l.trim_start_matches('#').replace('`', "").as_str()))
                    .collect();
                if !anchors.iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target} (no heading #{fragment})", page.display()));
                }
            }
        }
    }
    assert!(pages.len() > 10, "{pages:?}");
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
