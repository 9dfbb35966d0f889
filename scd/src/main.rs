fn main() {
    println!("scd {}", env!("CARGO_PKG_VERSION"));
}
