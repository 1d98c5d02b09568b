//! The one error type of the daemon: an errno plus the context that explains it
//! (which layer, which path). The errno a FUSE reply carries is taken here and only
//! here (`Error::errno`, through `fuse/ops.rs`).

use std::fmt;
use std::io;

#[derive(Debug)]
pub struct Error {
    errno: i32,
    context: String,
    /// A message for the user that stands on its own (no errno text appended).
    usage: bool,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, context: impl Into<String>) -> Error {
        Error {
            errno,
            context: context.into(),
            usage: false,
        }
    }

    /// An error from a bare errno with no context yet.
    pub fn from_errno(errno: i32) -> Error {
        Error::new(errno, String::new())
    }

    /// A configuration or usage problem; the message is shown to the user as it is.
    pub fn usage(message: impl Into<String>) -> Error {
        Error {
            usage: true,
            ..Error::new(libc::EINVAL, message)
        }
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// Prefix the context with where the error happened.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.context = if self.context.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {}", self.context)
        };
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        if self.context.is_empty() {
            write!(f, "{os}")
        } else if self.usage {
            write!(f, "{}", self.context)
        } else {
            write!(f, "{}: {os}", self.context)
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::new(e.raw_os_error().unwrap_or(libc::EIO), String::new())
    }
}

/// Attach context to any fallible result.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
}
