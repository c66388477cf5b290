// SPDX-License-Identifier: Apache-2.0

import Synchronization

/// A fixed number of mutex-protected shards in one allocation. A request reaches its shard through a pointer,
/// without the retain and release that an array of boxed mutexes costs on every access.
final class Shards<State: ~Copyable>: @unchecked Sendable {
    private let base: UnsafeMutablePointer<Mutex<State>>
    let count: Int

    init(count: Int, _ make: () -> State) {
        base = .allocate(capacity: count)
        for i in 0..<count { (base + i).initialize(to: Mutex(make())) }
        self.count = count
    }

    deinit {
        base.deinitialize(count: count)
        base.deallocate()
    }

    /// Runs `body` with shard `index` locked.
    @inline(__always)
    func withLock<Result: ~Copyable, E: Error>(
        _ index: Int, _ body: (inout sending State) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try base[index].withLock(body)
    }
}
