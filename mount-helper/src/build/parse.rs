//! The Containerfile grammar: parser directives (`# syntax=`, `# escape=`), comments,
//! line continuations, instructions with their `--flag=value` options, JSON (exec) forms
//! and heredocs (`<<EOF`, `<<-EOF`, quoted delimiters). Variables are not expanded here
//! (that is `expand.rs`, per instruction, with the values in effect at that step).

/// One instruction as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// The keyword, uppercase (`RUN`).
    pub cmd: String,
    /// Leading `--name=value` options (`--from=build`), in order; `--flag` alone has "".
    pub flags: Vec<(String, String)>,
    /// Everything after the keyword and the flags, continuations joined.
    pub rest: String,
    /// Heredoc bodies named in `rest`, in order of appearance.
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heredoc {
    /// The delimiter word (`EOF`).
    pub name: String,
    /// The body, each line ending in '\n' (leading tabs stripped for `<<-`).
    pub body: String,
    /// A quoted delimiter (`<<'EOF'`): the body is taken literally, never expanded.
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Containerfile {
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `rest` as a JSON array of strings (exec form), if it is one.
    pub fn json_args(&self) -> Option<Vec<String>> {
        json_array(&self.rest)
    }

    /// The instruction as it reads on one line (for step output and errors).
    pub fn display(&self) -> String {
        let mut s = self.cmd.clone();
        for (k, v) in &self.flags {
            if v.is_empty() {
                s.push_str(&format!(" --{k}"));
            } else {
                s.push_str(&format!(" --{k}={v}"));
            }
        }
        if !self.rest.is_empty() {
            s.push(' ');
            s.push_str(&self.rest);
        }
        s
    }
}

/// A JSON array of strings (`["a", "b"]`), else None (then the shell form applies).
pub fn json_array(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// Instructions that take `--name=value` options before their arguments.
const FLAGGED: &[&str] = &["FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"];
/// Instructions whose arguments may name heredocs.
const HEREDOC: &[&str] = &["RUN", "COPY", "ADD"];
pub const KNOWN: &[&str] = &[
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "WORKDIR",
    "USER",
    "CMD",
    "ENTRYPOINT",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "STOPSIGNAL",
    "SHELL",
    "HEALTHCHECK",
    "ONBUILD",
    "MAINTAINER",
];

/// Parses directives at the top: `# key=value` lines before anything else. Returns the
/// escape character and the index of the first line after them.
fn directives(lines: &[&str]) -> Result<(char, usize), String> {
    let mut escape = '\\';
    let mut seen = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(body) = l.trim().strip_prefix('#') else {
            return Ok((escape, i));
        };
        let Some((k, v)) = body.split_once('=') else {
            return Ok((escape, i));
        };
        let k = k.trim().to_ascii_lowercase();
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Ok((escape, i));
        }
        if seen.contains(&k) {
            return Err(format!("line {}: parser directive {k} given twice", i + 1));
        }
        seen.push(k.clone());
        if k == "escape" {
            escape = match v.trim() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(format!(
                        "line {}: escape directive {other:?}: use \\ or `",
                        i + 1
                    ))
                }
            };
        }
        // `syntax` and unknown directives change nothing here.
    }
    Ok((escape, lines.len()))
}

/// Heredoc markers in `rest`: `<<[-]WORD`, `<<[-]"WORD"`, `<<[-]'WORD'`.
fn heredoc_markers(rest: &str) -> Vec<(String, bool, bool)> {
    let b = rest.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < b.len() + 1 && i + 1 < b.len() {
        if b[i] == b'<' && b[i + 1] == b'<' && (i == 0 || b[i - 1] != b'<') {
            let mut j = i + 2;
            let strip = b.get(j) == Some(&b'-');
            if strip {
                j += 1;
            }
            let quote = match b.get(j) {
                Some(b'"') | Some(b'\'') => Some(b[j]),
                _ => None,
            };
            if quote.is_some() {
                j += 1;
            }
            let start = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j > start {
                let name = rest[start..j].to_string();
                let closed = match quote {
                    Some(q) => b.get(j) == Some(&q),
                    None => true,
                };
                if closed {
                    out.push((name, strip, quote.is_some()));
                    i = j + usize::from(quote.is_some());
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Splits `--name=value` words off the front of `s`.
fn split_flags(s: &str) -> (Vec<(String, String)>, String) {
    let mut flags = Vec::new();
    let mut rest = s.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let word = &after[..end];
        if word.is_empty() {
            break;
        }
        let (k, v) = word.split_once('=').unwrap_or((word, ""));
        flags.push((k.to_string(), v.to_string()));
        rest = after[end..].trim_start();
    }
    (flags, rest.to_string())
}

pub fn parse(text: &str) -> Result<Containerfile, String> {
    let lines: Vec<&str> = text.lines().collect();
    let (escape, first) = directives(&lines)?;
    let mut instructions = Vec::new();
    let mut i = first;
    while i < lines.len() {
        let start = i;
        let l = lines[i];
        i += 1;
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // Join continuations: a line ending in the escape character goes on; comment and
        // empty lines inside a continuation are dropped, as docker does.
        let mut logical = String::new();
        let mut cur = l.to_string();
        loop {
            let trimmed = cur.trim_end();
            if let Some(body) = trimmed.strip_suffix(escape) {
                logical.push_str(body);
                // The next non-comment line continues it.
                let mut next = None;
                while i < lines.len() {
                    let n = lines[i];
                    i += 1;
                    let nt = n.trim_start();
                    if nt.starts_with('#') || nt.is_empty() {
                        continue;
                    }
                    next = Some(n.to_string());
                    break;
                }
                match next {
                    Some(n) => cur = n,
                    None => break,
                }
            } else {
                logical.push_str(&cur);
                break;
            }
        }
        let logical = logical.trim();
        let (word, rest) = logical
            .split_once(char::is_whitespace)
            .unwrap_or((logical, ""));
        let cmd = word.to_ascii_uppercase();
        if !KNOWN.contains(&cmd.as_str()) {
            return Err(format!(
                "line {}: unknown instruction {word:?} (known: {})",
                start + 1,
                KNOWN.join(", ")
            ));
        }
        let (flags, rest) = if FLAGGED.contains(&cmd.as_str()) {
            split_flags(rest)
        } else {
            (Vec::new(), rest.trim().to_string())
        };
        let mut heredocs = Vec::new();
        if HEREDOC.contains(&cmd.as_str()) && json_array(&rest).is_none() {
            for (name, strip, quoted) in heredoc_markers(&rest) {
                let mut body = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let mut line = lines[i];
                    i += 1;
                    if strip {
                        line = line.trim_start_matches('\t');
                    }
                    if line == name {
                        closed = true;
                        break;
                    }
                    body.push_str(line);
                    body.push('\n');
                }
                if !closed {
                    return Err(format!(
                        "line {}: heredoc <<{name} is not closed: end it with a line holding only {name}",
                        start + 1
                    ));
                }
                heredocs.push(Heredoc { name, body, quoted });
            }
        }
        instructions.push(Instruction {
            line: start + 1,
            cmd,
            flags,
            rest,
            heredocs,
        });
    }
    Ok(Containerfile {
        escape,
        instructions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let f = parse(text).unwrap();
        assert_eq!(f.instructions.len(), 1, "{f:?}");
        f.instructions.into_iter().next().unwrap()
    }

    #[test]
    fn comments_continuations_and_case() {
        let f = parse(
            "# a comment\n\nfrom bb AS b\nRUN echo a \\\n  # inside\n\n  && echo b\n  # tail\nCMD [\"sh\"]\n",
        )
        .unwrap();
        let c: Vec<_> = f.instructions.iter().map(|i| i.cmd.as_str()).collect();
        assert_eq!(c, ["FROM", "RUN", "CMD"]);
        assert_eq!(f.instructions[0].rest, "bb AS b");
        assert_eq!(f.instructions[1].rest, "echo a   && echo b");
        assert_eq!(f.instructions[1].line, 4);
        assert_eq!(f.instructions[2].json_args(), Some(vec!["sh".to_string()]));
    }

    #[test]
    fn escape_directive() {
        let f = parse("# escape=`\n# syntax=docker/dockerfile:1\nRUN dir c:\\ `\n  x\n").unwrap();
        assert_eq!(f.escape, '`');
        assert_eq!(f.instructions[0].rest, "dir c:\\   x");
        // After the first instruction a directive-looking line is a comment.
        let f = parse("FROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(f.escape, '\\');
        assert_eq!(f.instructions[1].rest, "a  b");
        assert!(parse("# escape=x\nFROM a\n").is_err());
        assert!(parse("# escape=`\n# escape=\\\nFROM a\n").is_err());
    }

    #[test]
    fn flags() {
        let i = one("COPY --from=build --chown=1:2 --chmod=644 a b /d/\n");
        assert_eq!(i.flag("from"), Some("build"));
        assert_eq!(i.flag("chown"), Some("1:2"));
        assert_eq!(i.flag("chmod"), Some("644"));
        assert_eq!(i.rest, "a b /d/");
        assert_eq!(
            i.display(),
            "COPY --from=build --chown=1:2 --chmod=644 a b /d/"
        );
        // ENV values that look like flags are values.
        assert_eq!(one("ENV --x=1\n").rest, "--x=1");
    }

    #[test]
    fn heredocs() {
        let f = parse(
            "RUN <<EOF\necho a\n  echo b\nEOF\nRUN <<-'X' cat <<Y\n\tliteral $A\nX\nsecond\nY\nCOPY <<EOF /f\nbody\nEOF\n",
        )
        .unwrap();
        let r = &f.instructions[0];
        assert_eq!(r.heredocs.len(), 1);
        assert_eq!(r.heredocs[0].body, "echo a\n  echo b\n");
        assert!(!r.heredocs[0].quoted);
        let r = &f.instructions[1];
        assert_eq!(r.heredocs[0].name, "X");
        assert_eq!(r.heredocs[0].body, "literal $A\n");
        assert!(r.heredocs[0].quoted);
        assert_eq!(r.heredocs[1].body, "second\n");
        assert_eq!(f.instructions[2].cmd, "COPY");
        assert_eq!(f.instructions[2].heredocs[0].body, "body\n");
        assert!(parse("RUN <<EOF\nno end\n").is_err());
        // `<<` inside a JSON form is not a heredoc.
        assert!(one("RUN [\"sh\", \"-c\", \"cat <<E\"]\n")
            .heredocs
            .is_empty());
    }

    #[test]
    fn unknown_instruction_names_the_line() {
        let e = parse("FROM a\nFROB x\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("FROB"), "{e}");
    }
}
