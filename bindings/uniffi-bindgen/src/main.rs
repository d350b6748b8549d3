//! The `uniffi-bindgen` command pinned to the workspace's uniffi version (run by `bindings/scripts/generate.sh`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
