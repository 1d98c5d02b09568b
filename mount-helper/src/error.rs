//! One error type for the whole helper: a single human-readable line that names the thing
//! that went wrong and, where there is one, the fix. `main` prints it and exits 1.

use std::fmt;

#[derive(Debug)]
pub struct Error {
    msg: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error { msg: msg.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Errors must stay on one line even when an OS message or a child's stderr has
        // newlines in it.
        let one_line: String = self
            .msg
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        f.write_str(one_line.trim())
    }
}

impl std::error::Error for Error {}

/// Shorthand for building an error with `format!` arguments.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::error::Error::new(format!($($arg)*)) };
}

/// Adds "what we were doing" to lower-level errors.
pub trait Context<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {}", what(), e)))
    }
}
