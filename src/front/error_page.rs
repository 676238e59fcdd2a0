//! Pages the proxy answers with itself. They name the proxy by its
//! `visible_hostname` and never carry a version string.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The status line, a one-line reason, and the page.
pub fn render(status: StatusCode, detail: &str, hostname: &str) -> (Response<()>, Bytes) {
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n\
         <body><h1>{t}</h1>\n<p>{d}</p>\n<hr><address>{h}</address></body></html>\n",
        t = escape(&title),
        d = escape(detail),
        h = escape(hostname),
    );
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html;charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
    (resp, Bytes::from(page))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_the_host_and_escapes() {
        let (resp, body) = render(StatusCode::FORBIDDEN, "denied <b>", "proxy.example");
        assert_eq!(resp.status(), 403);
        let s = std::str::from_utf8(&body).unwrap();
        assert!(s.contains("<h1>403 Forbidden</h1>"));
        assert!(s.contains("denied &lt;b&gt;"));
        assert!(s.contains("<address>proxy.example</address>"));
        assert!(!s.to_ascii_lowercase().contains("sekisho/"));
    }
}
