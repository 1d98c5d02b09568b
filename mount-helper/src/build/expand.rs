//! ARG/ENV substitution as the Dockerfile reference defines it: `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}`, with
//! quotes ('...' literal, "..." expanded) and the escape character, splitting into words
//! on unquoted blanks where an instruction takes several.

/// Looks a variable up: None when it is not set.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands `s` into words (quotes removed, split on unquoted whitespace).
pub fn words(s: &str, vars: Vars, escape: char) -> Result<Vec<String>, String> {
    lex(s, vars, escape, true)
}

/// Expands `s` as one word (quotes removed, blanks kept).
pub fn word(s: &str, vars: Vars, escape: char) -> Result<String, String> {
    Ok(lex(s, vars, escape, false)?.concat())
}

/// Expands only the `$` references of `s` (a heredoc body): quotes are text, the escape
/// character escapes a `$` only.
pub fn text(s: &str, vars: Vars, escape: char) -> Result<String, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            c if c == escape && chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' => i = dollar(&chars, i, vars, &mut out, escape)?,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn lex(s: &str, vars: Vars, escape: char, split: bool) -> Result<Vec<String>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    // A word exists once something (even "") was written to it.
    let mut started = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == escape {
            if let Some(&n) = chars.get(i + 1) {
                cur.push(n);
                i += 2;
            } else {
                cur.push(c);
                i += 1;
            }
            started = true;
            continue;
        }
        match c {
            '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    cur.push(chars[i]);
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("unmatched ' in {s:?}"));
                }
                i += 1;
                started = true;
            }
            '"' => {
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(format!("unmatched \" in {s:?}"));
                    };
                    if d == '"' {
                        i += 1;
                        break;
                    }
                    if d == escape {
                        // Inside double quotes the escape only escapes what the shell would.
                        match chars.get(i + 1) {
                            Some(&n) if n == '"' || n == '$' || n == escape => {
                                cur.push(n);
                                i += 2;
                            }
                            _ => {
                                cur.push(d);
                                i += 1;
                            }
                        }
                        continue;
                    }
                    if d == '$' {
                        i = dollar(&chars, i, vars, &mut cur, escape)?;
                        continue;
                    }
                    cur.push(d);
                    i += 1;
                }
                started = true;
            }
            '$' => {
                i = dollar(&chars, i, vars, &mut cur, escape)?;
                started = true;
            }
            c if split && c.is_whitespace() => {
                if started || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                started = false;
                i += 1;
            }
            c => {
                cur.push(c);
                started = true;
                i += 1;
            }
        }
    }
    if started || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the `$...` at `chars[i]` into `out`; returns the index after it.
fn dollar(
    chars: &[char],
    i: usize,
    vars: Vars,
    out: &mut String,
    escape: char,
) -> Result<usize, String> {
    let mut j = i + 1;
    match chars.get(j) {
        Some('{') => {
            j += 1;
            let start = j;
            while j < chars.len() && is_name(chars[j]) {
                j += 1;
            }
            let name: String = chars[start..j].iter().collect();
            if name.is_empty() {
                return Err("bad substitution: ${} needs a variable name".into());
            }
            let value = vars(&name);
            match chars.get(j) {
                Some('}') => {
                    out.push_str(&value.unwrap_or_default());
                    Ok(j + 1)
                }
                Some(&op0) if op0 == ':' || op0 == '-' || op0 == '+' || op0 == '?' => {
                    let colon = op0 == ':';
                    if colon {
                        j += 1;
                    }
                    let op = *chars
                        .get(j)
                        .ok_or_else(|| format!("bad substitution ${{{name}: unclosed"))?;
                    if !matches!(op, '-' | '+' | '?') {
                        return Err(format!(
                            "unsupported modifier in ${{{name}{}{op}...}}: use :-, :+ or :?",
                            if colon { ":" } else { "" }
                        ));
                    }
                    j += 1;
                    // The word runs to the matching '}' (nested ${...} allowed).
                    let wstart = j;
                    let mut depth = 0;
                    while j < chars.len() {
                        match chars[j] {
                            c if c == escape => j += 1,
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        j += 1;
                    }
                    if j >= chars.len() {
                        return Err(format!("bad substitution ${{{name}...: no closing }}"));
                    }
                    let raw: String = chars[wstart..j].iter().collect();
                    let set = match (&value, colon) {
                        (Some(v), true) => !v.is_empty(),
                        (Some(_), false) => true,
                        (None, _) => false,
                    };
                    match op {
                        '-' if set => out.push_str(value.as_deref().unwrap_or("")),
                        '-' => out.push_str(&word(&raw, vars, escape)?),
                        '+' if set => out.push_str(&word(&raw, vars, escape)?),
                        '+' => {}
                        _ if set => out.push_str(value.as_deref().unwrap_or("")),
                        _ => {
                            let msg = word(&raw, vars, escape)?;
                            return Err(format!(
                                "{name}: {}",
                                if msg.is_empty() {
                                    "is not set".to_string()
                                } else {
                                    msg
                                }
                            ));
                        }
                    }
                    Ok(j + 1)
                }
                _ => Err(format!("bad substitution ${{{name}...: no closing }}")),
            }
        }
        Some(&c) if is_name(c) && !c.is_ascii_digit() => {
            let start = j;
            while j < chars.len() && is_name(chars[j]) {
                j += 1;
            }
            let name: String = chars[start..j].iter().collect();
            out.push_str(&vars(&name).unwrap_or_default());
            Ok(j)
        }
        _ => {
            // A lone '$' is itself.
            out.push('$');
            Ok(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("one".into()),
            "E" => Some(String::new()),
            "S" => Some("a b".into()),
            _ => None,
        }
    }

    fn w(s: &str) -> String {
        word(s, &env, '\\').unwrap()
    }

    #[test]
    fn forms() {
        assert_eq!(w("$A"), "one");
        assert_eq!(w("${A}x"), "onex");
        assert_eq!(w("$Ax"), "");
        assert_eq!(w("${U:-def}"), "def");
        assert_eq!(w("${E:-def}"), "def");
        assert_eq!(w("${E-def}"), "");
        assert_eq!(w("${U-def}"), "def");
        assert_eq!(w("${A:-def}"), "one");
        assert_eq!(w("${A:+alt}"), "alt");
        assert_eq!(w("${E:+alt}"), "");
        assert_eq!(w("${E+alt}"), "alt");
        assert_eq!(w("${U:+alt}"), "");
        assert_eq!(w("${U:-${A}}"), "one");
        assert_eq!(w("a$"), "a$");
        assert!(word("${U:?need U}", &env, '\\')
            .unwrap_err()
            .contains("need U"));
        assert_eq!(w("${A:?x}"), "one");
        assert!(word("${A", &env, '\\').is_err());
        assert!(word("${A:=x}", &env, '\\').is_err());
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A b\""), "one b");
        assert_eq!(w("\\$A"), "$A");
        assert_eq!(word("`$A", &env, '`').unwrap(), "$A");
        assert_eq!(w("\"a\\\"b\""), "a\"b");
        assert!(word("'open", &env, '\\').is_err());
    }

    #[test]
    fn heredoc_text() {
        assert_eq!(
            text("a \"$A\" '${U:-d}' \\$A\n", &env, '\\').unwrap(),
            "a \"one\" 'd' $A\n"
        );
    }

    #[test]
    fn splitting() {
        let v = words("a  \"b c\" $S '' d=\"$A x\"", &env, '\\').unwrap();
        // An expanded value is not split again (Dockerfile words, not shell fields).
        assert_eq!(v, ["a", "b c", "a b", "", "d=one x"]);
        assert_eq!(words("  ", &env, '\\').unwrap(), Vec::<String>::new());
    }
}
