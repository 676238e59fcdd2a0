//! Configuration diagnostics: every problem found in a file, each with the
//! line and column it points at.

use std::fmt;
use std::ops::Range;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    /// Byte range in the source the problem points at.
    pub span: Range<usize>,
    pub message: String,
}

/// All problems found in one configuration source.
#[derive(Debug)]
pub struct Diagnostics {
    /// File name as given by the operator (or `<embedded default>`).
    pub file: String,
    pub source: String,
    pub items: Vec<Diag>,
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            let (line, col) = line_col(&self.source, d.span.start);
            writeln!(f, "{}:{}:{}: error: {}", self.file, line, col, d.message)?;
            if let Some(text) = self.source.lines().nth(line - 1) {
                let width = if d.span.end > d.span.start {
                    let end = d.span.end.min(self.source.len());
                    let (eline, ecol) = line_col(&self.source, end);
                    if eline == line { (ecol - col).max(1) } else { 1 }
                } else {
                    1
                };
                writeln!(f, "  {line:>4} | {text}")?;
                writeln!(f, "       | {}{}", " ".repeat(col - 1), "^".repeat(width))?;
            }
        }
        let n = self.items.len();
        write!(f, "{}: {} error{}", self.file, n, if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // 'é' is two bytes but one column
        assert_eq!(line_col(src, 9), (2, 3));
    }

    #[test]
    fn display_points_at_the_problem() {
        let d = Diagnostics {
            file: "x.toml".into(),
            source: "a = 1\nport = 99999\n".into(),
            items: vec![Diag {
                span: 13..18,
                message: "bad port".into(),
            }],
        };
        let s = d.to_string();
        assert!(s.starts_with("x.toml:2:8: error: bad port\n"), "{s}");
        assert!(s.contains("       |        ^^^^^"), "{s}");
        assert!(s.ends_with("x.toml: 1 error"), "{s}");
    }
}
