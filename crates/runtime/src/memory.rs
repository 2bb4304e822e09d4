//! Handing memory freed after a job back to the system.
//!
//! glibc's malloc keeps what a thread freed in that thread's arena for
//! reuse, so a service that moved a few hundred MiB through a job stays
//! that large afterwards, idle. [`release_free_memory`] returns the free
//! pages of every arena; services call it when a transfer ends.

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
