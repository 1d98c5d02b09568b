//! layerctl: the image helper. Argument parsing and dispatch live in `cli`.

fn main() {
    // The pause watchdog is not a user command: it is started by `commit` and must not
    // install the interrupt handlers or parse a command line.
    if std::env::args_os().nth(1).as_deref() == Some(layerctl::pause::WATCHDOG_ARG.as_ref()) {
        std::process::exit(layerctl::pause::watchdog_main());
    }
    std::process::exit(layerctl::cli::main());
}
