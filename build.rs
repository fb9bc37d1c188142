//! Links the credfs executable as non-PIE: `credfs get` and
//! `docker-credential-credfs` start once per image pull, and a PIE binary
//! of this size spends most of its start-up applying ~40k relocations.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
