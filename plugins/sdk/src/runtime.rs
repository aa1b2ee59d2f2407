//! What `std` would give a plugin on wasm32, which the plugins do without
//! (see the crate's documentation): a global allocator, a panic handler
//! that traps (the gateway turns a trap into a fail-closed 500), the C
//! routines `core` calls, and the canonical ABI's `cabi_realloc`.
//! Everything here is for wasm32 only.

// The allocator below relies on a plugin instance being single-threaded.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
compile_error!("plugin-sdk's allocator is for single-threaded wasm32 only");

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

/// A bump allocator, because a plugin instance is short-lived.
///
/// The gateway retires a sandbox as soon as its memory grows: the requests
/// one sandbox serves share its initial memory, and memory never needs to
/// be reused. A bump
/// allocator starts at `__heap_base` inside the initial memory (1 MiB, set
/// in `plugins/.cargo/config.toml`) and only asks for `memory.grow` when a
/// request needs more. A general-purpose allocator (dlmalloc) grows memory
/// on its first allocation whatever the initial size, and growing is the
/// most expensive thing a fresh sandbox does (the host must change page
/// protections, and change them back when the sandbox is recycled).
/// The most recent block can still be freed or resized in place, which
/// covers the common grow-a-`Vec` and temporary-string patterns; anything
/// else is reclaimed when the sandbox is dropped. The gateway's memory
/// limit bounds a plugin that allocates without end.
#[cfg(target_arch = "wasm32")]
mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32::{memory_grow, memory_size};
    use core::cell::Cell;
    use core::ptr::null_mut;

    const PAGE: usize = 65536;

    extern "C" {
        /// First byte after the data and stack, placed by the linker.
        static __heap_base: u8;
    }

    pub struct Bump {
        /// Next free address; 0 until the first allocation.
        next: Cell<usize>,
    }

    // SAFETY: a component instance runs on one thread.
    unsafe impl Sync for Bump {}

    impl Bump {
        pub const fn new() -> Self {
            Bump { next: Cell::new(0) }
        }

        /// Moves the end of the heap to `end`, growing memory if needed.
        fn reserve_to(&self, end: usize) -> bool {
            let have = memory_size(0).saturating_mul(PAGE);
            if end > have {
                let pages = (end - have).div_ceil(PAGE);
                if memory_grow(0, pages) == usize::MAX {
                    return false;
                }
            }
            self.next.set(end);
            true
        }
    }

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let mut next = self.next.get();
            if next == 0 {
                next = core::ptr::addr_of!(__heap_base) as usize;
            }
            let start = match next.checked_add(layout.align() - 1) {
                Some(n) => n & !(layout.align() - 1),
                None => return null_mut(),
            };
            match start.checked_add(layout.size()) {
                Some(end) if self.reserve_to(end) => start as *mut u8,
                _ => null_mut(),
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // Only the most recent block goes back.
            if ptr as usize + layout.size() == self.next.get() {
                self.next.set(ptr as usize);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // The most recent block grows or shrinks where it is.
            if ptr as usize + layout.size() == self.next.get() {
                return match (ptr as usize).checked_add(new_size) {
                    Some(end) if self.reserve_to(end) => ptr,
                    _ => null_mut(),
                };
            }
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            }
            new
        }
    }
}

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
