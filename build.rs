// Bakes libtorch's library folder into the binary's rpath, so `partrain` runs without
// LD_LIBRARY_PATH (LIBTORCH comes from .cargo/config.toml or the environment).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
}
