fn main() {
    eprintln!("scd-bench: not built yet (see docs/benchmarks.md once it exists)");
    std::process::exit(2);
}
