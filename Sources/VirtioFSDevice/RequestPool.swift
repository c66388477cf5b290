// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Logging
import Synchronization
import VFSSystem
import VhostUser
import Virtqueue

/// Worker threads that serve one queue's requests off its worker thread (`--thread-pool-size`), so a slow
/// request (a large fsync, a full disk) does not hold up the requests behind it.
///
/// The queue worker copies a chain's buffers into a job and returns at once; a pool thread, with its own FUSE
/// session and scratch memory, serves the job and posts the completion back, and the queue worker, the only
/// writer of the used ring, publishes it. Jobs are allocated once and reused.
final class RequestPool<FS: FileSystem>: @unchecked Sendable {
    /// Buffers one job holds: a 1 MiB request in 4 KiB pages, its headers, and room to spare.
    static var jobCapacity: Int { 272 }

    /// Passed whole from the queue worker to one pool thread and back through the locked lists: never shared.
    final class Job: @unchecked Sendable {
        let readable = UnsafeMutableBufferPointer<iovec>.allocate(capacity: RequestPool.jobCapacity)
        let writable = UnsafeMutableBufferPointer<iovec>.allocate(capacity: RequestPool.jobCapacity)
        var readableCount = 0
        var writableCount = 0
        var head: UInt16 = 0

        deinit {
            readable.deallocate()
            writable.deallocate()
        }
    }

    private let pending = Mutex<[Job]>([])
    private let free = Mutex<[Job]>([])
    /// Counts queued jobs (an eventfd in semaphore mode): each pool thread takes one at a time.
    private let ready: OwnedFD
    private let stopping = Atomic<Bool>(false)
    private var threads: [SystemThread] = []
    private let completions: DeferredCompletions

    init(size: Int, server: FUSEServer<FS>, completions: DeferredCompletions, logger: Logger, queue: Int) throws(Errno) {
        self.completions = completions
        ready = try EventFD.semaphore()
        for i in 0..<size {
            threads.append(try SystemThread(name: "pool-\(queue)-\(i)") { [self] in
                // Each pool thread has a session, and so scratch memory, of its own.
                serve(FUSESession(server: server, label: "queue \(queue) pool thread \(i)") { token, length in
                    completions.complete(head: UInt16(truncatingIfNeeded: token), length: length)
                })
            })
        }
    }

    /// Hands `chain` to the pool; false when it has more buffers than a job holds (serve it inline then).
    func submit(_ chain: DescriptorChain) -> Bool {
        guard chain.readableCount <= Self.jobCapacity, chain.writableCount <= Self.jobCapacity else { return false }
        let job = free.withLock { $0.popLast() } ?? Job()
        for i in 0..<chain.readableCount { job.readable[i] = chain.readable[i] }
        for i in 0..<chain.writableCount { job.writable[i] = chain.writable[i] }
        job.readableCount = chain.readableCount
        job.writableCount = chain.writableCount
        job.head = chain.headIndex
        pending.withLock { $0.append(job) }
        EventFD.signal(ready.borrowed)
        return true
    }

    private func serve(_ session: FUSESession<FS>) {
        while true {
            EventFD.waitSemaphore(ready.borrowed)
            if stopping.load(ordering: .acquiring) { return }
            guard let job = pending.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            let written = session.handle(
                readable: UnsafeBufferPointer(rebasing: job.readable[0..<job.readableCount]),
                writable: UnsafeMutableBufferPointer(rebasing: job.writable[0..<job.writableCount]), token: UInt64(job.head))
            if let written { completions.complete(head: job.head, length: written) }
            free.withLock { $0.append(job) }
        }
    }

    deinit {
        stopping.store(true, ordering: .releasing)
        for _ in threads { EventFD.signal(ready.borrowed) }
        for thread in threads { thread.join() }
    }
}
