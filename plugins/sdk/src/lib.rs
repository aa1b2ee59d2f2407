//! Shared by every plugin in this workspace.
//!
//! On `wasm32` the plugins are `no_std`: Rust's standard library would make
//! the component import WASI (stdio, environment, exit) even when the code
//! never uses it, and the gateway offers plugins nothing but
//! `tunnel:policy/host`. This crate supplies what `std` would have: a global
//! allocator and a panic handler that traps (the gateway turns a trap into a
//! fail-closed 500).
#![cfg_attr(target_arch = "wasm32", no_std)]

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

// `core` calls `memcmp`, `memcpy` and friends, which the `wasm32-wasip2`
// target expects from C's library. Link them statically from the
// toolchain's self-contained wasi-libc: those routines import nothing.
#[cfg(target_arch = "wasm32")]
#[link(name = "c")]
extern "C" {}

/// The canonical ABI's allocator, through which the host passes strings and
/// lists into the plugin. `std` provides it on `wasm32-wasip2`; without
/// `std` this is the one definition.
///
/// # Safety
///
/// Called by the component runtime with the canonical ABI's contract:
/// `old_ptr`/`old_len`/`align` describe a block this function returned
/// before (or `old_len` is 0).
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use core::alloc::Layout;
    extern crate alloc;
    if new_len == 0 {
        return align as *mut u8;
    }
    let ptr = if old_len == 0 {
        alloc::alloc::alloc(Layout::from_size_align_unchecked(new_len, align))
    } else {
        alloc::alloc::realloc(
            old_ptr,
            Layout::from_size_align_unchecked(old_len, align),
            new_len,
        )
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable()
    }
    ptr
}
