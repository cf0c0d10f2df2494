//! Prompt rendering: `{name}` is replaced by the variable's value, `{{` and
//! `}}` are literal braces, and the combined system prompt is Layer 1's base
//! prompt, [`SEPARATOR`], then the rendered overlay prompt.

use std::collections::{BTreeMap, BTreeSet};

/// Between the Layer 1 base prompt and the tenant's rendered prompt.
pub const SEPARATOR: &str = "\n\n---\n\n";

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `{name}` with no value for `name`.
    #[error(
        "unknown variable {{{name}}}; define it under [agent.variables] or write {{{{ for a literal brace"
    )]
    UnknownVariable {
        /// The variable's name.
        name: String,
    },
    /// A `{` that does not start `{name}` or `{{`.
    #[error(
        "unclosed or malformed '{{' at character {at}; write {{name}} with name of a-z, 0-9 and _, or {{{{ for a literal brace"
    )]
    Malformed {
        /// Character offset of the brace.
        at: usize,
    },
    /// A `}` that is not part of `{name}` or `}}`.
    #[error("stray '}}' at character {at}; write }}}} for a literal brace")]
    StrayClose {
        /// Character offset of the brace.
        at: usize,
    },
    /// The output passed the limit: rendering stopped there.
    #[error(
        "the rendered prompt is longer than {max} characters (rendering stopped there); Layer 1 allows at most {max}"
    )]
    TooLong {
        /// The limit, `policy.max_prompt_chars`.
        max: usize,
    },
}

/// A rendered template and the variables it did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text with every variable substituted.
    pub text: String,
    /// Variables defined but never referenced (a warning, not an error).
    pub unused: Vec<String>,
}

/// Renders `template` with `vars`.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<Rendered, RenderError> {
    render_within(template, vars, usize::MAX)
}

/// Renders `template` with `vars`, stopping as soon as the output passes
/// `max_chars` characters: a short template naming a long variable many
/// times cannot make the publisher build gigabytes to refuse them.
pub fn render_within(
    template: &str,
    vars: &BTreeMap<String, String>,
    max_chars: usize,
) -> Result<Rendered, RenderError> {
    let mut out = String::with_capacity(template.len().min(max_chars) + 64);
    let mut chars = 0usize;
    let mut push = |out: &mut String, piece: &str| {
        chars = chars.saturating_add(piece.chars().count());
        if chars > max_chars {
            return Err(RenderError::TooLong { max: max_chars });
        }
        out.push_str(piece);
        Ok(())
    };
    let mut used = BTreeSet::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    // Copy runs of plain text whole; only braces need a decision.
    while let Some(off) = template[i..].find(['{', '}']) {
        push(&mut out, &template[i..i + off])?;
        let at = i + off;
        let doubled = bytes.get(at + 1) == Some(&bytes[at]);
        match bytes[at] {
            b'{' if doubled => {
                push(&mut out, "{")?;
                i = at + 2;
            }
            b'{' => {
                let close = template[at + 1..].find('}').map(|c| at + 1 + c);
                let name = close.map(|c| &template[at + 1..c]).unwrap_or("");
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                let (Some(close), true) = (close, valid) else {
                    return Err(RenderError::Malformed {
                        at: char_offset(template, at),
                    });
                };
                let value = vars.get(name).ok_or_else(|| RenderError::UnknownVariable {
                    name: name.to_owned(),
                })?;
                push(&mut out, value)?;
                used.insert(name);
                i = close + 1;
            }
            _ if doubled => {
                push(&mut out, "}")?;
                i = at + 2;
            }
            _ => {
                return Err(RenderError::StrayClose {
                    at: char_offset(template, at),
                });
            }
        }
    }
    push(&mut out, &template[i..])?;
    let unused = vars
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .cloned()
        .collect();
    Ok(Rendered { text: out, unused })
}

/// The character offset of byte offset `at`, for messages.
fn char_offset(s: &str, at: usize) -> usize {
    s[..at].chars().count()
}

/// The combined system prompt served for a tenant.
pub fn system_prompt(base_prompt: &str, rendered_overlay: &str) -> String {
    let mut s = String::with_capacity(base_prompt.len() + SEPARATOR.len() + rendered_overlay.len());
    s.push_str(base_prompt);
    s.push_str(SEPARATOR);
    s.push_str(rendered_overlay);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_stops_as_soon_as_the_output_passes_the_limit() {
        let big = "x".repeat(100_000);
        let template = "{a}".repeat(100_000);
        let started = std::time::Instant::now();
        let e = render_within(&template, &vars(&[("a", &big)]), 8000).expect_err("too long");
        assert_eq!(e, RenderError::TooLong { max: 8000 });
        // 10 GB were asked for; nothing near it was built.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let fits = render_within("{a}{a}", &vars(&[("a", "ab")]), 4).expect("fits");
        assert_eq!(fits.text, "abab");
        assert!(render_within("{a}{a}x", &vars(&[("a", "ab")]), 4).is_err());
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn substitutes_variables_and_reports_unused() {
        let r = render(
            "Hi {name}, {{literal}} }}",
            &vars(&[("name", "Ava"), ("x", "1")]),
        );
        assert_eq!(
            r,
            Ok(Rendered {
                text: "Hi Ava, {literal} }".into(),
                unused: vec!["x".into()]
            })
        );
    }

    #[test]
    fn variable_names_are_lowercase_digits_and_underscores_only() {
        let vars: BTreeMap<String, String> = [("Biz".to_owned(), "Acme".to_owned())].into();
        for template in ["Hi {Biz}", "Hi {biz-name}", "Hi {bïz}", "Hi { biz}"] {
            assert!(
                matches!(render(template, &vars), Err(RenderError::Malformed { .. })),
                "{template}"
            );
        }
        let vars: BTreeMap<String, String> = [("biz_2".to_owned(), "Acme".to_owned())].into();
        assert_eq!(render("Hi {biz_2}", &vars).expect("valid").text, "Hi Acme");
    }

    #[test]
    fn unknown_variable_is_an_error() {
        assert_eq!(
            render("Hi {who}", &vars(&[])),
            Err(RenderError::UnknownVariable { name: "who".into() })
        );
    }

    #[test]
    fn malformed_braces_are_errors() {
        assert_eq!(
            render("a {b", &vars(&[])),
            Err(RenderError::Malformed { at: 2 })
        );
        assert_eq!(
            render("a {b c}", &vars(&[])),
            Err(RenderError::Malformed { at: 2 })
        );
        assert_eq!(
            render("a } b", &vars(&[])),
            Err(RenderError::StrayClose { at: 2 })
        );
    }

    #[test]
    fn system_prompt_puts_layer1_first() {
        assert_eq!(system_prompt("BASE", "tenant"), "BASE\n\n---\n\ntenant");
    }
}
