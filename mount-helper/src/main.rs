//! layerctl: the image helper. Argument parsing and dispatch live in `cli`.

fn main() {
    std::process::exit(layerctl::cli::main());
}
