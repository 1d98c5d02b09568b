//! `layerfs [-f] [-d] -o lowerdir=...[,upperdir=...,workdir=...] MOUNTPOINT`: parses the
//! command line and hands the resulting `Config` to the daemon.

use std::process::ExitCode;

use layerfs::config::{self, Invocation};
use layerfs::daemon::{self, ReadyPipe};

fn main() -> ExitCode {
    // Present only in a daemon that a background `layerfs` started; its stderr is
    // /dev/null, so failures must travel through the pipe to reach the user.
    let ready = ReadyPipe::from_env();
    let config = match config::parse_args(std::env::args_os().skip(1)) {
        Ok(Invocation::Mount(config)) => config,
        Ok(Invocation::Help) => {
            print!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("layerfs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e, ready),
    };
    init_logging(config.debug);
    let result = match ready {
        Some(ready) => daemon::serve(*config, Some(ready)).map_err(daemon::StartError::Local),
        None => daemon::run(*config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, None),
    }
}

fn fail(error: &dyn std::fmt::Display, ready: Option<ReadyPipe>) -> ExitCode {
    match ready {
        Some(ready) => ready.fail(error),
        None => eprintln!("layerfs: {error}"),
    }
    ExitCode::FAILURE
}

/// `-d` logs at debug level, otherwise warnings only; RUST_LOG overrides either.
fn init_logging(debug: bool) {
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
}
