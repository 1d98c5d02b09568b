//! Progress reporting: spinners with an entry count, bars with bytes, rate and ETA for long
//! streams, when stderr is a terminal; nothing
//! otherwise (scripts and CI logs stay clean).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Every visible bar is drawn through one MultiProgress, so that a bar for one long blob
/// and the count of blobs around it stack instead of overwriting each other's line.
fn shown(pb: ProgressBar) -> ProgressBar {
    static MULTI: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    MULTI.get_or_init(MultiProgress::new).add(pb)
}

pub fn spinner(msg: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = shown(ProgressBar::new_spinner());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {pos} entries ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

pub fn bar(msg: &str, len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = shown(ProgressBar::new(len));
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// A bar over `len` bytes with the rate and the time left: for one long stream (a big
/// layer being compressed, hashed or written out), where a count of layers would sit
/// still for its whole duration.
pub fn bytes(msg: &str, len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = shown(ProgressBar::new(len));
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// A writer that advances `pb` by what passes through it.
pub struct Writer<'a, W> {
    inner: W,
    pb: &'a ProgressBar,
}

impl<'a, W: std::io::Write> Writer<'a, W> {
    pub fn new(inner: W, pb: &'a ProgressBar) -> Self {
        Writer { inner, pb }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for Writer<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that advances `pb` by what is read through it.
pub struct Reader<'a, R> {
    inner: R,
    pb: &'a ProgressBar,
}

impl<'a, R: std::io::Read> Reader<'a, R> {
    pub fn new(inner: R, pb: &'a ProgressBar) -> Self {
        Reader { inner, pb }
    }
}

impl<R: std::io::Read> std::io::Read for Reader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}
