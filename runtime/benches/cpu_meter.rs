//! What metering a guest's CPU time costs on the hot path: every poll of a guest reads the
//! thread's CPU clock twice (before and after), `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`,
//! which Linux serves with a system call, not the vDSO. This measures one read; a poll pays
//! two, and an echo invocation is polled a few times.
//!
//! `cargo bench -p tern-runtime --bench cpu_meter`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn thread_cpu_clock(c: &mut Criterion) {
    c.bench_function("thread CPU clock read", |b| {
        b.iter(|| {
            black_box(rustix::time::clock_gettime(
                rustix::time::ClockId::ThreadCPUTime,
            ))
        })
    });
    // For scale: the wall clock the runtime reads anyway (vDSO).
    c.bench_function("monotonic clock read (for scale)", |b| {
        b.iter(|| {
            black_box(rustix::time::clock_gettime(
                rustix::time::ClockId::Monotonic,
            ))
        })
    });
}

criterion_group!(benches, thread_cpu_clock);
criterion_main!(benches);
