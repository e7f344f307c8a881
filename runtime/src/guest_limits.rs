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
}

impl GuestLimits {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        GuestLimits {
            limits,
            running: false,
            grows: 0,
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
        if allowed && self.running && desired > current {
            self.grows += 1;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Allowed above, then refused by the allocator or the module's maximum: not a growth.
        if self.running {
            self.grows = self.grows.saturating_sub(1);
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
