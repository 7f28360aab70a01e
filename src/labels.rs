//! Label sets that identify a series, and the matchers playbook triggers use on them.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The label set of one series, sorted by name so that equal sets compare and hash equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// Builds a label set from any iterator of name/value pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Labels(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of one label, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl fmt::Display for Labels {
    /// Formats as PromQL does: `{a="x",b="y"}`, with control characters escaped in
    /// names and values, so a label cannot forge a log line or send terminal escapes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}=\"{}\"", escape_label_value(k), escape_label_value(v))?;
        }
        f.write_str("}")
    }
}

/// Escapes a label value as the Prometheus text format does (backslash, quote,
/// newline), and every other control character as `\u{..}`: untrusted text shown to
/// people.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// One label matcher, written as in PromQL: `value` or `=value` (equal), `!=value`,
/// `=~regex`, `!~regex`. Regexes are anchored, as in PromQL.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The label equals the value (a missing label counts as the empty string).
    Eq(String),
    /// The label differs from the value.
    Ne(String),
    /// The whole label value matches the regex.
    Re(Regex),
    /// The whole label value does not match the regex.
    NotRe(Regex),
}

impl Matcher {
    /// Parses the PromQL-like matcher syntax described on [`Matcher`].
    pub fn parse(spec: &str) -> Result<Self, regex::Error> {
        let anchored = |re: &str| Regex::new(&format!("^(?:{re})$"));
        Ok(if let Some(re) = spec.strip_prefix("=~") {
            Matcher::Re(anchored(re)?)
        } else if let Some(re) = spec.strip_prefix("!~") {
            Matcher::NotRe(anchored(re)?)
        } else if let Some(v) = spec.strip_prefix("!=") {
            Matcher::Ne(v.to_string())
        } else if let Some(v) = spec.strip_prefix('=') {
            Matcher::Eq(v.to_string())
        } else {
            Matcher::Eq(spec.to_string())
        })
    }

    /// The matcher as written (`="v"`, `=~"re"`, ...), for listings.
    pub fn spec(&self) -> String {
        match self {
            Matcher::Eq(v) => format!("={v:?}"),
            Matcher::Ne(v) => format!("!={v:?}"),
            // Strip the anchoring added at parse time.
            Matcher::Re(re) => format!("=~{:?}", unanchor(re.as_str())),
            Matcher::NotRe(re) => format!("!~{:?}", unanchor(re.as_str())),
        }
    }

    /// Whether a label value (empty when the label is missing) satisfies this matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Eq(v) => value == v,
            Matcher::Ne(v) => value != v,
            Matcher::Re(re) => re.is_match(value),
            Matcher::NotRe(re) => !re.is_match(value),
        }
    }
}

fn unanchor(re: &str) -> &str {
    re.strip_prefix("^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(re)
}

/// Whether every `(label, matcher)` pair holds for the label set.
pub fn all_match(matchers: &[(String, Matcher)], labels: &Labels) -> bool {
    matchers
        .iter()
        .all(|(name, m)| m.matches(labels.get(name).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_sorts_and_escapes() {
        let l = Labels::from_pairs([("b", "x\"y"), ("a", "1")]);
        assert_eq!(l.to_string(), r#"{a="1",b="x\"y"}"#);
    }

    #[test]
    fn matchers_follow_promql() {
        assert!(Matcher::parse("cart").unwrap().matches("cart"));
        assert!(!Matcher::parse("cart").unwrap().matches("carts"));
        assert!(Matcher::parse("=~ca.*").unwrap().matches("cart"));
        // Anchored: a substring match is not enough.
        assert!(!Matcher::parse("=~art").unwrap().matches("cart"));
        assert!(Matcher::parse("!~a|b").unwrap().matches("c"));
        assert!(Matcher::parse("!=x").unwrap().matches(""));
        assert!(Matcher::parse("=~(").is_err());
    }

    #[test]
    fn missing_label_is_empty() {
        let m = vec![("ns".to_string(), Matcher::parse("").unwrap())];
        assert!(all_match(&m, &Labels::default()));
        let m = vec![("ns".to_string(), Matcher::parse("shop").unwrap())];
        assert!(!all_match(&m, &Labels::default()));
    }

    #[test]
    fn control_characters_in_labels_are_escaped_for_people() {
        let l = Labels::from_pairs([("pod\x1b[2J", "a\nfake row\r\x1b[31mred\t\"q\"")]);
        let shown = l.to_string();
        assert_eq!(
            shown,
            r#"{pod\u{1b}[2J="a\nfake row\u{d}\u{1b}[31mred\u{9}\"q\""}"#
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
}
