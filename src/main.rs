fn main() {
    eprintln!("layerfs: not implemented yet");
    std::process::exit(1);
}
