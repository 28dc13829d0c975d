fn main() {
    eprintln!("wgrad: CLI being written");
}
