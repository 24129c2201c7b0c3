//! The `iovmm` binary.

fn main() {
    eprintln!("iovmm: not assembled yet");
    std::process::exit(1);
}
