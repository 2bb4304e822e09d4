//! Handing memory freed after a job back to the system.
//!
//! glibc's malloc keeps what a thread freed in that thread's arena for
//! reuse, so a service that moved a few hundred MiB through a job stays
//! that large afterwards, idle. [`release_free_memory`] returns the free
//! pages of every arena; services call it when a transfer ends.
//! [`limit_arenas`] keeps the arenas few: each holds its own free memory
//! and its own fragments of long-lived data.

/// Arenas of a service's heap (glibc's default is 8 per CPU).
pub const ARENAS: i32 = 2;

/// Limits the heap to [`ARENAS`] arenas; call it before other threads
/// start ([`crate::service_runtime`] does). Does nothing off glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() {
    // SAFETY: mallopt takes two integers and has no precondition.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Limits the heap to [`ARENAS`] arenas; does nothing off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

/// Returns free heap pages to the system (glibc's `malloc_trim(0)`); does
/// nothing elsewhere. It walks every arena, so call it between pieces of
/// work, not in a loop.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and has no precondition; it
    // locks each arena itself while it trims it.
    let released = unsafe { libc::malloc_trim(0) } != 0;
    tracing::debug!(released, "returned free heap pages to the system");
}

/// Returns free heap pages to the system (glibc's `malloc_trim(0)`); does
/// nothing elsewhere.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
