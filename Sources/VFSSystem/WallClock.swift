// SPDX-License-Identifier: Apache-2.0

import Glibc

/// The clock file timestamps are taken from: a file's ctime is set from it by the kernel when the file changes.
public enum WallClock {
    /// Nanoseconds since the epoch, as precise as the kernel keeps them: never less than the ctime of a change
    /// that completed before the call. The corresponding C function is `clock_gettime(CLOCK_REALTIME)` (in the vDSO:
    /// no system call).
    @inline(__always)
    public static func nanoseconds() -> Int64 {
        // SAFETY: clock_gettime writes the local timespec during the call.
        var now = timespec()
        unsafe clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
    }

    /// The same clock as of the last timer tick (a few milliseconds behind at most), for comparisons that need
    /// no more: cheaper than `nanoseconds()` (no read of the CPU's counter). The corresponding C function is
    /// `clock_gettime(CLOCK_REALTIME_COARSE)`.
    @inline(__always)
    public static func coarseNanoseconds() -> Int64 {
        // SAFETY: clock_gettime writes the local timespec during the call.
        var now = timespec()
        unsafe clock_gettime(CLOCK_REALTIME_COARSE, &now)
        return Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
    }
}

/// The clock durations are measured with: never set back. (The same few lines as `WallClock`'s: each stays
/// small enough to be inlined into callers in other modules.)
public enum MonotonicClock {
    /// Nanoseconds since an arbitrary start. The corresponding C function is `clock_gettime(CLOCK_MONOTONIC)`
    /// (in the vDSO: no system call).
    @inline(__always)
    public static func nanoseconds() -> Int64 {
        // SAFETY: clock_gettime writes the local timespec during the call.
        var now = timespec()
        unsafe clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
    }
}

extension FileTime {
    /// The time as nanoseconds since the epoch (wrapping far outside any file's lifetime).
    @inline(__always)
    public var nanosecondsSinceEpoch: Int64 { seconds &* 1_000_000_000 &+ Int64(nanoseconds) }
}
