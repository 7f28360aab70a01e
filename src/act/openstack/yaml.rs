//! The part of YAML that `clouds.yaml` and `secure.yaml` use: block mappings nested by
//! indentation, block sequences, flow sequences of scalars, plain and quoted scalars,
//! comments. Anything else (anchors, multi-line scalars, flow mappings, tags) is an
//! error naming its line, never a silent misreading. The `openstack` crate reads these
//! files only from its fixed search path, so homeostat reads them itself.

use serde_json::{Map, Value};

/// Parses a document into JSON values (scalars stay strings but for `true`, `false`,
/// `null`, `~` and integers); the error says which line is not understood.
pub fn parse(text: &str) -> Result<Value, String> {
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| Line::new(i + 1, raw).transpose())
        .collect::<Result<_, _>>()?;
    if lines.is_empty() {
        return Ok(Value::Null);
    }
    let mut pos = 0;
    let value = block(&lines, &mut pos, lines[0].indent)?;
    match lines.get(pos) {
        Some(l) => Err(format!("line {}: unexpected indentation", l.number)),
        None => Ok(value),
    }
}

/// One meaningful line: its indentation and its text without the comment.
struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

impl<'a> Line<'a> {
    fn new(number: usize, raw: &'a str) -> Result<Option<Line<'a>>, String> {
        if raw.starts_with("---") || raw.starts_with("...") {
            return Ok(None);
        }
        let body = raw.trim_start_matches(' ');
        if body.starts_with('\t') {
            return Err(format!(
                "line {number}: tabs are not allowed for indentation"
            ));
        }
        let text = strip_comment(body).trim_end();
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(Line {
            number,
            indent: raw.len() - body.len(),
            text,
        }))
    }
}

/// The text before a ` #` comment that is not inside quotes.
fn strip_comment(s: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &s[..i],
            _ => {}
        }
        prev = c;
    }
    s
}

/// A mapping or a sequence whose lines are indented by exactly `indent`.
fn block(lines: &[Line], pos: &mut usize, indent: usize) -> Result<Value, String> {
    let first = &lines[*pos];
    if first.text == "-" || first.text.starts_with("- ") {
        let mut items = Vec::new();
        // A sequence at its key's own indentation ends at the next key.
        while let Some(l) = lines
            .get(*pos)
            .filter(|l| l.indent == indent && (l.text == "-" || l.text.starts_with("- ")))
        {
            *pos += 1;
            let rest = l.text[1..].trim_start();
            if rest.is_empty() {
                items.push(nested(lines, pos, indent)?);
            } else if split_key(rest).is_some() {
                return Err(format!(
                    "line {}: mappings inside sequences are not supported",
                    l.number
                ));
            } else {
                items.push(scalar(rest, l.number)?);
            }
        }
        return Ok(Value::Array(items));
    }
    let mut map = Map::new();
    while let Some(l) = lines.get(*pos).filter(|l| l.indent == indent) {
        let (key, rest) =
            split_key(l.text).ok_or_else(|| format!("line {}: expected `key: value`", l.number))?;
        let key = match scalar(key, l.number)? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        *pos += 1;
        let value = if rest.is_empty() {
            nested(lines, pos, indent)?
        } else {
            scalar(rest, l.number)?
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(format!("line {}: duplicate key {key:?}", l.number));
        }
    }
    Ok(Value::Object(map))
}

/// The block under a key or a `-` that has nothing after it (`null` if none follows).
fn nested(lines: &[Line], pos: &mut usize, parent: usize) -> Result<Value, String> {
    match lines.get(*pos) {
        Some(l) if l.indent > parent => block(lines, pos, l.indent),
        // A sequence may sit at its key's own indentation.
        Some(l) if l.indent == parent && (l.text == "-" || l.text.starts_with("- ")) => {
            block(lines, pos, l.indent)
        }
        _ => Ok(Value::Null),
    }
}

/// `key: rest` split at the first `: ` (or a final `:`) outside quotes.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let (mut single, mut double) = (false, false);
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            ':' if !single && !double => {
                let next = bytes.get(i + 1);
                if next.is_none() || next == Some(&b' ') {
                    return Some((text[..i].trim_end(), text[i + 1..].trim_start()));
                }
            }
            _ => {}
        }
    }
    None
}

/// One scalar, or a flow sequence of scalars.
fn scalar(text: &str, line: usize) -> Result<Value, String> {
    let unsupported = |what: &str| Err(format!("line {line}: {what} are not supported"));
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("line {line}: unterminated flow sequence"))?;
        if inner.trim().is_empty() {
            return Ok(Value::Array(vec![]));
        }
        return inner.split(',').map(|s| scalar(s.trim(), line)).collect();
    }
    match text.chars().next() {
        Some('"') => return double_quoted(text, line).map(Value::String),
        Some('\'') => {
            let inner = text
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''))
                .filter(|_| text.len() >= 2)
                .ok_or_else(|| format!("line {line}: unterminated quoted string"))?;
            return Ok(Value::String(inner.replace("''", "'")));
        }
        Some('{') => return unsupported("flow mappings"),
        Some('&' | '*') => return unsupported("anchors and aliases"),
        Some('!') => return unsupported("tags"),
        Some('|' | '>') => return unsupported("block scalars"),
        _ => {}
    }
    Ok(match text {
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "null" | "Null" | "NULL" | "~" => Value::Null,
        _ => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text.to_string()),
        },
    })
}

fn double_quoted(text: &str, line: usize) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err(format!("line {line}: text after a quoted string"))
                }
            }
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\' | '/')) => out.push(c),
                Some(other) => {
                    return Err(format!("line {line}: unsupported escape \\{other}"));
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("line {line}: unterminated quoted string"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_clouds_yaml_as_openstack_tools_write_it() {
        let text = r#"
# written by Horizon
clouds:
  prod:
    auth:
      auth_url: https://keystone.example.com:5000/v3   # public
      application_credential_id: "0c8e7 # not a comment"
      username: 'o''brien'
    region_name: RegionOne
    interface: public
    identity_api_version: 3
    verify: true
    regions:
    - RegionOne
    - RegionTwo
    tags: [a, "b"]
    cacert:
"#;
        assert_eq!(
            parse(text).unwrap(),
            json!({"clouds": {"prod": {
                "auth": {"auth_url": "https://keystone.example.com:5000/v3",
                         "application_credential_id": "0c8e7 # not a comment",
                         "username": "o'brien"},
                "region_name": "RegionOne", "interface": "public",
                "identity_api_version": 3, "verify": true,
                "regions": ["RegionOne", "RegionTwo"], "tags": ["a", "b"],
                "cacert": null}}})
        );
    }

    #[test]
    fn what_it_cannot_read_is_an_error_with_its_line() {
        for (text, line) in [
            ("a:\n  b: &x 1\n", "line 2"),
            ("a: {b: 1}\n", "line 1"),
            ("a:\n\tb: 1\n", "line 2"),
            ("a: 1\na: 2\n", "line 2"),
            ("a: \"open\n", "line 1"),
            ("a:\n  - b: 1\n", "line 2"),
            ("just text\n", "line 1"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(line), "{text:?}: {e}");
        }
    }
}
