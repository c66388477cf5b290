// SPDX-License-Identifier: Apache-2.0

import Synchronization

/// A fixed number of mutex-protected shards in one allocation. A request reaches its shard through a pointer,
/// without the retain and release that an array of boxed mutexes costs on every access.
// SAFETY: Owns its allocation of `count` mutexes, initialized in `init` and freed in `deinit`; indexes are the callers'
// shard numbers, masked to `count`.
@safe
final class Shards<State: ~Copyable>: @unchecked Sendable {
    private let base: UnsafeMutablePointer<Mutex<State>>
    let count: Int

    init(count: Int, _ make: () -> State) {
        unsafe base = .allocate(capacity: count)
        for i in 0..<count { unsafe (base + i).initialize(to: Mutex(make())) }
        self.count = count
    }

    deinit {
        // SAFETY: deinitializes and frees exactly the `count` mutexes init made; no one holds the pointer after.
        unsafe base.deinitialize(count: count)
        unsafe base.deallocate()
    }

    /// Runs `body` with shard `index` locked.
    @inline(__always)
    // SAFETY: callers pass a shard index below `count` (an id masked to the shard bits).
    func withLock<Result: ~Copyable, E: Error>(
        _ index: Int, _ body: (inout sending State) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try unsafe base[index].withLock(body)
    }
}
