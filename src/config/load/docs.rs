//! `docs/config.md` against the loader: every key a table accepts is
//! documented in that table's reference, and every documented key is accepted.
//!
//! Each key table of the reference is preceded by `<!-- keys: TABLE... -->`
//! naming the configuration table(s) its rows belong to, as [`schema`] names
//! them (`top` for the top level). The first cell of a row names keys in
//! backquotes: `name`, several (`` `payload_hex`, `expect_hex` ``), a key of
//! a sub-table (`proxy_protocol.require`), or a sub-table itself
//! (`[listener.tls]`).

use std::collections::BTreeSet;

use super::schema;

type Pairs = BTreeSet<(String, String)>;

fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// `a.b.c` as (`a.b`, `c`).
fn split_last(path: &str) -> (String, String) {
    match path.rsplit_once('.') {
        Some((t, k)) => (t.to_string(), k.to_string()),
        None => (String::new(), path.to_string()),
    }
}

fn is_separator(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('|') && t.contains("---") && t.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

/// The first cell of a table row (a `\|` inside it does not end it).
fn first_cell(row: &str) -> &str {
    let row = row.trim().trim_start_matches('|');
    let bytes = row.as_bytes();
    let end = (0..bytes.len())
        .find(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\'))
        .unwrap_or(row.len());
    row[..end].trim()
}

/// The spans between backquotes.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The (table, key) pairs the reference documents, and the problems with its
/// shape (a key table without a marker, a row outside a table, an unknown table).
fn documented(text: &str, tables: &BTreeSet<&str>) -> (Pairs, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Pairs::new();
    let mut problems = Vec::new();
    let mut pending: Option<(usize, Vec<String>)> = None;
    let mut fenced = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.starts_with("```") {
            fenced = !fenced;
            i += 1;
            continue;
        }
        if fenced {
            i += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("<!-- keys:") {
            if let Some((at, _)) = &pending {
                problems.push(format!("line {at}: a `keys` marker with no table after it"));
            }
            let mut names = Vec::new();
            for name in rest.trim_end_matches("-->").split_whitespace() {
                let name = if name == "top" { "" } else { name };
                if !tables.contains(name) {
                    problems.push(format!("line {}: the marker names `{name}`, which is no table", i + 1));
                }
                names.push(name.to_string());
            }
            pending = Some((i + 1, names));
            i += 1;
            continue;
        }
        if !line.starts_with('|') {
            i += 1;
            continue;
        }
        if !lines.get(i + 1).is_some_and(|l| is_separator(l)) {
            problems.push(format!(
                "line {}: a row outside any table (a blank line or a missing header row splits the table)",
                i + 1
            ));
            i += 1;
            continue;
        }
        let header = first_cell(line);
        let names = match pending.take() {
            Some((_, names)) => Some(names),
            None if header == "key" => {
                problems.push(format!(
                    "line {}: a key table without a `<!-- keys: TABLE -->` marker",
                    i + 1
                ));
                None
            }
            None => None,
        };
        i += 2;
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            let cell = first_cell(lines[i]);
            for table in names.iter().flatten() {
                for key in quoted(cell) {
                    out.insert(match key.strip_prefix('[') {
                        // a sub-table by its full path
                        Some(_) => split_last(key.trim_matches(['[', ']'])),
                        None => split_last(&join(table, key)),
                    });
                }
            }
            i += 1;
        }
    }
    if let Some((at, _)) = pending {
        problems.push(format!("line {at}: a `keys` marker with no table after it"));
    }
    (out, problems)
}

/// Every mismatch between the schema and the reference, one line each.
fn mismatches(schema: &[(&'static str, &'static [&'static str])], text: &str) -> Vec<String> {
    let tables: BTreeSet<&str> = schema.iter().map(|(t, _)| *t).collect();
    let accepted: Pairs = schema
        .iter()
        .flat_map(|(t, keys)| keys.iter().map(|k| (t.to_string(), k.to_string())))
        .collect();
    // a key holding a table with keys of its own is documented through them
    let holds_table = |t: &str, k: &str| {
        let p = join(t, k);
        tables.contains(p.as_str()) || tables.contains(format!("{p}.NAME").as_str())
    };
    let (documented, mut problems) = documented(text, &tables);
    for (t, k) in accepted.difference(&documented) {
        if !holds_table(t, k) {
            problems.push(format!("`{}` is accepted but not documented", join(t, k)));
        }
    }
    for (t, k) in documented.difference(&accepted) {
        problems.push(format!("`{}` is documented but not accepted", join(t, k)));
    }
    problems
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_is_accepted() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let problems = mismatches(&schema(), &text);
    assert!(
        problems.is_empty(),
        "docs/config.md and the loader disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_comparison_finds_each_kind_of_mismatch() {
    static A: &[&str] = &["name", "tls", "pp"];
    static B: &[&str] = &["require", "timeout"];
    static C: &[&str] = &["cert"];
    static TOP: &[&str] = &["a", "b"];
    let schema = [("", TOP), ("a", A), ("a.pp", B), ("a.tls", C)];
    let doc = "\
<!-- keys: a -->

| key | default | meaning |
| --- | --- | --- |
| `name` | x | y |
| `pp.require`, `pp.nothing` | x | y |
| `[a.tls]` | x | y |

<!-- keys: a.tls -->
| key | default | meaning |
| --- | --- | --- |
| `cert` | x | y |

| key | default | meaning |
| --- | --- | --- |
| `b` | x | y |

<!-- keys: top nosuch -->
| key | default | meaning |
| --- | --- | --- |
| `a` | x | y |

| `b` | x | y |

```toml
| not a row |
```
";
    let mut got = mismatches(&schema, doc);
    got.sort();
    let mut want = vec![
        "`a.pp.nothing` is documented but not accepted".to_string(),
        "`a.pp.timeout` is accepted but not documented".to_string(),
        "`b` is accepted but not documented".to_string(),
        "`nosuch.a` is documented but not accepted".to_string(),
        "line 14: a key table without a `<!-- keys: TABLE -->` marker".to_string(),
        "line 18: the marker names `nosuch`, which is no table".to_string(),
        "line 23: a row outside any table (a blank line or a missing header row splits the table)".to_string(),
    ];
    want.sort();
    assert_eq!(got, want);
}
