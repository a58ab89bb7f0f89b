fn main() {
    println!("vidgrad {}", env!("CARGO_PKG_VERSION"));
}
