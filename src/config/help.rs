//! `layerfs --help`, written from the tables of `options.rs`: every flag and listed option
//! with its default, the kernel flags passed on and the options accepted and ignored, so
//! that the help cannot name an option the parser does not take or leave one out.

use super::options::{Section, FLAGS, IGNORED, IGNORED_KEYS, KERNEL_FLAGS, OPTIONS};

const SYNOPSIS: &str = "usage: layerfs [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=UPPER,workdir=WORK][,OPTIONS] MOUNTPOINT";

const INTRO: &str = "Merges read-only lower directories (top-most first) with one writable \
    upper directory at MOUNTPOINT. Without upperdir the mount is read-only. Several -o are \
    merged, later options win; a colon inside a path is written \\: and a comma \\,.";

const KERNEL_TITLE: &str =
    "kernel flags, passed on (the later of a pair wins; noatime unless atime is given):";

const IGNORED_TITLE: &str = "accepted and ignored (options of other file systems, of mount(8), \
    or of fuse-overlayfs features that do not apply):";

const ROOT: &str = "Running as root turns on allow_other, suid and default_permissions.";

/// Lines are wrapped to this many columns.
const WIDTH: usize = 88;
/// Where the description of a flag or option starts.
const COLUMN: usize = 25;

/// The whole help text, ending in a newline.
pub fn usage() -> String {
    let mut out = format!("{SYNOPSIS}\n\n");
    paragraph(&mut out, "", INTRO);
    out.push_str("\nflags:\n");
    for flag in FLAGS {
        let mut names = flag.names.join(", ");
        if !flag.arg.is_empty() {
            names = format!("{names} {}", flag.arg);
        }
        entry(&mut out, &names, flag.help);
    }
    for (section, title) in [
        (Section::Layers, "layer options"),
        (Section::Fuse, "FUSE options"),
    ] {
        out.push_str(&format!("\n{title}:\n"));
        for opt in OPTIONS.iter().filter(|o| o.section == section) {
            let Some(help) = opt.help else { continue };
            let name = match opt.arg {
                "" => opt.name.to_string(),
                arg => format!("{}={arg}", opt.name),
            };
            match opt.default {
                Some(default) => entry(&mut out, &name, &format!("{help} (default {default})")),
                None => entry(&mut out, &name, help),
            }
        }
    }
    let flags: Vec<&str> = KERNEL_FLAGS.iter().map(|(flag, _)| *flag).collect();
    out.push('\n');
    paragraph(&mut out, "", KERNEL_TITLE);
    paragraph(&mut out, "    ", &flags.join(", "));
    let keys = IGNORED_KEYS.iter().map(|k| format!("{k}="));
    let ignored: Vec<String> = IGNORED.iter().map(|o| o.to_string()).chain(keys).collect();
    out.push('\n');
    paragraph(&mut out, "", IGNORED_TITLE);
    paragraph(&mut out, "    ", &format!("{}, x-*", ignored.join(", ")));
    out.push('\n');
    paragraph(&mut out, "", ROOT);
    out
}

/// `    NAME      description`, the description on the next line when NAME is too wide.
fn entry(out: &mut String, name: &str, help: &str) {
    let head = format!("    {name}");
    if head.len() + 2 > COLUMN {
        out.push_str(&head);
        out.push('\n');
        paragraph(out, &" ".repeat(COLUMN), help);
    } else {
        let indent = " ".repeat(COLUMN);
        wrap(out, &format!("{head:<COLUMN$}"), &indent, help);
    }
}

/// `text` wrapped to [`WIDTH`], every line starting with `indent`.
fn paragraph(out: &mut String, indent: &str, text: &str) {
    wrap(out, indent, indent, text);
}

fn wrap(out: &mut String, first: &str, indent: &str, text: &str) {
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help names every flag, every listed option with its value and default, and every
    /// kernel flag and ignored option, within the width.
    #[test]
    fn help_is_written_from_the_tables() {
        let text = usage();
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for flag in FLAGS {
            for name in flag.names {
                assert!(text.contains(name), "help does not mention {name}");
            }
        }
        for opt in OPTIONS {
            match opt.help {
                Some(_) => assert!(text.contains(opt.name), "help leaves out {}", opt.name),
                None => assert!(
                    !text.contains(&format!(" {}", opt.name)),
                    "help lists the alias {}",
                    opt.name
                ),
            }
            if let Some(default) = opt.default {
                assert!(
                    words.contains(&format!("(default {default})")),
                    "{}",
                    opt.name
                );
            }
        }
        for (flag, _) in KERNEL_FLAGS {
            assert!(text.contains(flag), "{flag}");
        }
        for key in IGNORED_KEYS {
            assert!(text.contains(&format!("{key}=")), "{key}");
        }
        for line in text.lines().skip(1) {
            assert!(line.len() <= WIDTH, "too wide: {line}");
        }
        assert!(text.contains("lowerdir=DIRS") && text.contains("threads=N"));
        assert!(text.ends_with(".\n"));
    }
}
