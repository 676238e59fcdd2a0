//! `/stats`: one self-contained HTML page (inline CSS, script and SVG, no
//! other resource) with a table per listener and per pool and its servers,
//! sparklines of the last ten minutes, and the operator's buttons.
//!
//! The page carries the `/stats.json` document it was served with, so it
//! draws at once; then it fetches `/stats.json` every 2 s and updates the
//! tables in place (rows are kept by name, so a weight being typed or a
//! button under the pointer is not replaced). The buttons POST to
//! `/stats/action` with the token typed into the page (kept in the tab's
//! `sessionStorage`, sent as `Authorization: Bearer`).

use serde_json::Value;

/// The page, with `__INITIAL__` where the embedded document goes.
const TEMPLATE: &str = include_str!("stats_page.html");

/// What the page may load: nothing from elsewhere; its own script and
/// styles, and `fetch` to this server.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                       connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page with `stats` embedded.
pub fn render(stats: &Value) -> String {
    // inside <script>, a `<` could close the element: JSON allows `\u003c` instead
    let embedded = stats.to_string().replace('<', "\\u003c");
    TEMPLATE.replacen("__INITIAL__", &embedded, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_embedded_and_cannot_close_the_script() {
        let v = serde_json::json!({"listeners": [{"name": "</script><b>x"}]});
        let page = render(&v);
        assert!(!page.contains("__INITIAL__"));
        assert!(!page.contains("</script><b>"));
        let start = page.find("type=\"application/json\">").unwrap() + 24;
        let end = start + page[start..].find("</script>").unwrap();
        let back: Value = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(back, v);
        // nothing is loaded from elsewhere
        for needle in ["src=\"http", "href=\"http", "@import", "url("] {
            assert!(!page.contains(needle), "{needle}");
        }
    }
}
