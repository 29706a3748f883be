//! A counting global allocator: every allocation (and reallocation) of the process is counted,
//! per thread and in total, so a workload can report heap allocations per message.
//!
//! The total is kept in cache-padded shards (one per thread, modulo [`SHARDS`]) so that two
//! busy threads do not bounce one counter's cache line between their CPUs on every allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SHARDS: usize = 32;

#[repr(align(128))]
struct Shard(AtomicU64);

static TOTAL: [Shard; SHARDS] = [const { Shard(AtomicU64::new(0)) }; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Allocations made by this thread.
    static OWN: Cell<u64> = const { Cell::new(0) };
    /// This thread's shard of [`TOTAL`], `usize::MAX` until its first allocation.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The system allocator, counting.
pub struct Counting;

#[inline]
fn count() {
    // `try_with`: a thread's last deallocations and allocations may run after its
    // thread-locals are gone; those are not counted per thread (they are rare and not timed).
    let _ = OWN.try_with(|n| n.set(n.get() + 1));
    let shard = SHARD
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            s.get()
        })
        .unwrap_or(0);
    TOTAL[shard].0.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches no allocator state.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (and reallocations) made by the calling thread so far.
pub fn thread_allocations() -> u64 {
    OWN.with(Cell::get)
}

/// Allocations (and reallocations) made by the whole process so far.
pub fn process_allocations() -> u64 {
    TOTAL.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

/// CPU time of the whole process so far (every thread, user and system), ns.
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
