//! The `iovmm` binary.

mod layout;

fn main() {
    eprintln!("iovmm: not assembled yet");
    std::process::exit(1);
}
