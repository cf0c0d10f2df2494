//! The shapes of branding fields and display names: what a dashboard or a
//! browser will be handed, checked as text before it is served.

pub(super) fn is_hex_colour(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    // A name, not an address: the last label is not all digits.
    let top_is_name = labels
        .last()
        .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()));
    s.len() <= 253
        && top_is_name
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(super) fn is_https_url(s: &str) -> bool {
    // Quotes, angle brackets, back-ticks, spaces and controls can break out
    // of an HTML attribute or a log line: none belong in a URL as written.
    let clean = !s.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\')
    });
    clean
        && url::Url::parse(s).is_ok_and(|u| {
            u.scheme() == "https"
                && u.username().is_empty()
                && u.password().is_none()
                && matches!(u.host(), Some(url::Host::Domain(d)) if is_domain(d))
        })
}

/// A display name is shown in dashboards and logs: text, not markup.
pub(super) fn has_markup(s: &str) -> bool {
    s.contains(['<', '>']) || html_escape::decode_html_entities(s) != s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(is_hex_colour("#0055ff"));
        assert!(!is_hex_colour("0055ff"));
        assert!(!is_hex_colour("#05f"));
        assert!(is_domain("help.acme.example"));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("bad_domain.example"));
        assert!(!is_domain("127.0.0.1"));
        assert!(is_https_url("https://acme.example/logo.png"));
        assert!(!is_https_url("http://acme.example/logo.png"));
        assert!(!is_https_url("javascript:alert(1)"));
        assert!(!is_https_url("https://acme.example/x\"onerror=\"alert(1)"));
        assert!(!is_https_url("https://user:pw@acme.example/logo.png"));
        assert!(!is_https_url("https://127.0.0.1/logo.png"));
        assert!(has_markup("<script>alert(1)</script>"));
        assert!(has_markup("Acme &lt;b&gt;"));
        assert!(!has_markup("Acme & Sons"));
    }
}
