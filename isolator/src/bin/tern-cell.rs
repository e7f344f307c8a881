//! A cell process on its own (the node's binary runs the same main as `tern cell`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(tern_isolator::inside::main(&args));
}
