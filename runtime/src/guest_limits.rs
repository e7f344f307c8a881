//! A guest's resource limits, counting the guest's own `memory.grow`s on the way.
//!
//! With the pooling allocator and guard pages, every growth changes page protections twice:
//! once when the guest grows (`mprotect` to make the pages accessible), and once when the next
//! instance takes the slot and its memory is shrunk back to the module's initial size. Each
//! `mprotect` on a multi-threaded process also interrupts the other CPUs to flush their TLBs.
//! A guest whose initial memory covers what it uses never pays this, so the count is what tells
//! a function's author whether their module is on the fast path
//! (`tern_guest_memory_grows_total`).

use wasmtime::{ResourceLimiter, StoreLimits};

/// [`StoreLimits`] plus the number of successful growths after instantiation.
pub(crate) struct GuestLimits {
    limits: StoreLimits,
    /// Set once the instance exists: the memory's initial allocation is not a growth.
    running: bool,
    grows: u64,
    /// Whether the last growth allowed was counted, so that only its failure uncounts it
    /// (wasmtime also reports failures of growths it never asked about).
    counted_last: bool,
}

impl GuestLimits {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        GuestLimits {
            limits,
            running: false,
            grows: 0,
            counted_last: false,
        }
    }

    /// From now on, a memory growth is the guest's own `memory.grow`.
    pub(crate) fn instantiated(&mut self) {
        self.running = true;
    }

    /// The guest's successful `memory.grow`s that added pages.
    pub(crate) fn grows(&self) -> u64 {
        self.grows
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.counted_last = allowed && self.running && desired > current;
        if self.counted_last {
            self.grows += 1;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Counted above, then refused by the allocator or the module's maximum: not a growth.
        if std::mem::take(&mut self.counted_last) {
            self.grows -= 1;
        }
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use wasmtime::StoreLimitsBuilder;

    const PAGE: usize = 65_536;

    #[test]
    fn only_the_guests_own_successful_growths_are_counted() {
        let mut l = GuestLimits::new(StoreLimitsBuilder::new().memory_size(4 * PAGE).build());
        // The initial allocation, before the instance exists.
        assert!(l.memory_growing(0, PAGE, None).unwrap());
        l.instantiated();
        assert!(l.memory_growing(PAGE, 2 * PAGE, None).unwrap());
        // `memory.grow 0` adds nothing.
        assert!(l.memory_growing(2 * PAGE, 2 * PAGE, None).unwrap());
        assert_eq!(l.grows(), 1);
        // Allowed, then failed: not a growth.
        assert!(l.memory_growing(2 * PAGE, 3 * PAGE, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert_eq!(l.grows(), 1);
        // A failure wasmtime reports without having asked: the earlier growth stays counted.
        l.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert_eq!(l.grows(), 1);
        // Refused by the memory limit: not counted, and nothing to uncount.
        assert!(!l.memory_growing(2 * PAGE, 8 * PAGE, None).unwrap());
        assert_eq!(l.grows(), 1);
    }
}
