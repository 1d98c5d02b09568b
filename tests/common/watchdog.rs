//! Hang detection for tests that drive a mount hard: a watchdog thread that ends the test
//! process loudly when no progress was recorded for too long.

/// Fails a test loudly when it stops making progress: a FUSE request that never gets an
/// answer cannot be cancelled from the blocked thread, so a helper thread watches a
/// heartbeat and, after `timeout` without one, prints what was running and exits the
/// whole test process (status 3). Only catches hangs; never a timing assertion.
pub struct Watchdog {
    state: std::sync::Arc<(
        std::sync::Mutex<(std::time::Instant, String)>,
        std::sync::atomic::AtomicBool,
    )>,
}

impl Watchdog {
    pub fn new(label: &str, timeout: std::time::Duration) -> Watchdog {
        let state = std::sync::Arc::new((
            std::sync::Mutex::new((std::time::Instant::now(), String::from("start"))),
            std::sync::atomic::AtomicBool::new(false),
        ));
        let s = state.clone();
        let label = label.to_string();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            if s.1.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let (last, what) = s.0.lock().unwrap().clone();
            if last.elapsed() > timeout {
                eprintln!(
                    "HANG in {label}: no progress for {:?} while: {what}\n(a FUSE request never got an answer, or the daemon deadlocked)",
                    last.elapsed()
                );
                std::process::exit(3);
            }
        });
        Watchdog { state }
    }

    /// Records progress; `what` is printed if the next step hangs.
    pub fn beat(&self, what: &str) {
        let mut g = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        *g = (std::time::Instant::now(), what.to_string());
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state
            .1
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
