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
    let mut out = String::with_capacity(template.len() + 64);
    let mut used = BTreeSet::new();
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                chars.next();
                out.push('{');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for (_, n) in chars.by_ref() {
                    if n == '}' {
                        closed = true;
                        break;
                    }
                    name.push(n);
                }
                let valid =
                    !name.is_empty() && name.chars().all(|n| n.is_ascii_alphanumeric() || n == '_');
                if !closed || !valid {
                    return Err(RenderError::Malformed { at });
                }
                let value = vars
                    .get(&name)
                    .ok_or_else(|| RenderError::UnknownVariable { name: name.clone() })?;
                out.push_str(value);
                used.insert(name);
            }
            '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(RenderError::StrayClose { at }),
            c => out.push(c),
        }
    }
    let unused = vars
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .cloned()
        .collect();
    Ok(Rendered { text: out, unused })
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
