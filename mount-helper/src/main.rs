//! layerctl: the image helper. Filled in by the layerctl issue.

fn main() {
    eprintln!("layerctl: not implemented yet");
    std::process::exit(1);
}
