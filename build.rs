// Bakes libtorch's library folder into the binary's rpath, so `partrain` runs without
// LD_LIBRARY_PATH (LIBTORCH comes from .cargo/config.toml or the environment), and compiles
// src/model/ops.cpp: two libtorch calls the tch crate does not expose (src/model/native.rs).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=src/model/ops.cpp");
    let libtorch = std::env::var("LIBTORCH").expect(
        "LIBTORCH is not set: scripts/setup.sh installs the venv's torch, which .cargo/config.toml names",
    );
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    // The PyPI wheel and the libtorch CPU zip (cxx11 ABI build) both use the new C++ ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/model/ops.cpp")
        .include(format!("{libtorch}/include"))
        .include(format!("{libtorch}/include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-w")
        .opt_level(2)
        .compile("partrain_native");
}
