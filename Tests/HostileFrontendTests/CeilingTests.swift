// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Foundation
import Glibc
import Passthrough
import Testing
import VFSSystem
import VhostUserFrontend

/// Every count a guest controls has a ceiling: past it, an error for the request and one log line, not a
/// thread, a descriptor or memory more.
@Suite("Every count a guest controls has a ceiling", .serialized)
struct CeilingTests {
    /// A file and a handle of it.
    func openFile(_ session: Session, _ daemon: DaemonUnderTest, _ file: String = "locked") throws -> (UInt64, UInt64) {
        daemon.share.write(file, "data")
        let node = try #require(session.lookup(file))
        let (error, handle) = session.open(node, flags: O_RDWR)
        try #require(error == 0)
        return (node, handle)
    }

    @Test("lock waits: past the ceiling SETLKW answers ENOLCK instead of starting a thread; one log line")
    func lockWaits() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon, queueSize: 2048)
        let (node, handle) = try openFile(session, daemon)
        #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_WRLCK)) == 0)
        let before = daemon.threadCount
        let count = FUSELimits.lockWaits + 300
        var heads: [UInt16] = []
        for owner in 0..<count {
            heads.append(session.requests.submit(
                frame(.setlkw, unique: session.unique, node: node, uid: 0, gid: 0,
                      Session.lock(handle: handle, owner: UInt64(100 + owner), type: F_WRLCK)),
                replyLength: 16, kick: false))
        }
        session.requests.kick.signal()
        // The requests past the ceiling are answered at once with ENOLCK.
        var refused = 0
        let deadline = Date().addingTimeInterval(10)
        for head in heads.suffix(300) {
            let left = max(1, Int(deadline.timeIntervalSinceNow * 1000))
            if let reply = session.requests.wait(for: head, milliseconds: left), outHeader(reply).error == -ENOLCK { refused += 1 }
        }
        #expect(refused == 300)
        let during = daemon.threadCount
        #expect(during <= before + FUSELimits.lockWaits, "\(during) threads with \(count) SETLKW (\(before) before)")
        // One line for the ceiling, however many requests met it.
        #expect(daemon.log.split(separator: "\n").filter { $0.contains("lock waits reached their ceiling") }.count == 1, "\(daemon.log)")
        // Released, the waiters take the lock in turn, each releasing it... here they simply all finish when
        // the ring stops; the threads go with them.
        _ = try session.frontend.stopQueue(1)
        #expect(heads.prefix(FUSELimits.lockWaits).allSatisfy { session.requests.isDone($0) })
        #expect(eventually { daemon.threadCount <= before - 1 }, "threads after the stop: \(daemon.threadCount)")
    }

    @Test("one chain published again and again while it waits is served once", arguments: [0, 1])
    func republishedChain(pool: Int) throws {
        let daemon = try DaemonUnderTest(["--thread-pool-size", "\(pool)"])
        let session = try Session(daemon, queueSize: 1024)
        let (node, handle) = try openFile(session, daemon)
        #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_WRLCK)) == 0)
        let before = daemon.threadCount
        let head = session.requests.submit(
            frame(.setlkw, unique: 4242, node: node, uid: 0, gid: 0, Session.lock(handle: handle, owner: 2, type: F_WRLCK)),
            replyLength: 16)
        usleep(100_000)
        // In batches the ring can hold (avail.idx never runs more than its size ahead of the device).
        for _ in 0..<3 {
            for _ in 0..<900 { session.requests.driver.publish(head) }
            session.requests.kick.signal()
            usleep(300_000)
        }
        #expect(daemon.threadCount <= before + 1, "\(daemon.threadCount) threads (\(before) before)")
        #expect(daemon.isRunning)
        #expect(daemon.problemLines.count <= 1, "\(daemon.log)")
    }

    @Test("lock descriptors: one per owner and node, dropped when the guest forgets the node; a ceiling per node")
    func lockDescriptors() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon, queueSize: 1024)
        let (node, handle) = try openFile(session, daemon)
        let before = daemon.descriptorCount
        for owner in 1...100 {
            #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: UInt64(owner), type: F_RDLCK)) == 0)
        }
        #expect(daemon.descriptorCount >= before + 100)
        // Past the ceiling for one node: ENOLCK, and no descriptor more.
        var refused = 0
        for owner in 101...(LockLimits.ownersPerNode + 50) {
            let error = session.status(.setlk, node: node, Session.lock(handle: handle, owner: UInt64(owner), type: F_RDLCK))
            if error == -ENOLCK { refused += 1 }
        }
        #expect(refused == 50)
        #expect(daemon.descriptorCount <= before + LockLimits.ownersPerNode)
        // GETLK of an owner that holds nothing opens nothing that stays.
        let peak = daemon.descriptorCount
        for owner in 5000..<5100 {
            _ = session.status(.getlk, node: node, Session.lock(handle: handle, owner: UInt64(owner), type: F_WRLCK))
        }
        #expect(daemon.descriptorCount <= peak)
        // The guest closes and forgets the file: every lock descriptor goes with the node.
        #expect(session.status(.release, node: node, bytes(fuse_release_in(fh: handle, flags: 0, release_flags: 0, lock_owner: 0))) == 0)
        session.hiprio.submit(frame(.forget, unique: session.unique, node: node, uid: 0, gid: 0, bytes(fuse_forget_in(nlookup: 1))), replyLength: 0)
        #expect(eventually { daemon.descriptorCount < before }, "descriptors: \(daemon.descriptorCount), \(before) before")
        #expect(daemon.log.split(separator: "\n").filter { $0.contains("lock owners of one file reached their ceiling") }.count == 1, "\(daemon.log)")
    }

    @Test("thousands of lock waits, each started and ended, leave threads and memory where they were")
    func lockWaitChurn() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon, queueSize: 256)
        let (node, handle) = try openFile(session, daemon)
        let threads = daemon.threadCount
        func cycle() {
            _ = session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_WRLCK))
            let waiting = session.requests.submit(
                frame(.setlkw, unique: session.unique, node: node, uid: 0, gid: 0, Session.lock(handle: handle, owner: 2, type: F_WRLCK)),
                replyLength: 16)
            _ = session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_UNLCK))
            _ = session.requests.wait(for: waiting)
            _ = session.status(.setlk, node: node, Session.lock(handle: handle, owner: 2, type: F_UNLCK))
        }
        for _ in 0..<500 { cycle() }
        let settled = daemon.residentKilobytes
        for _ in 0..<3000 { cycle() }
        let after = daemon.residentKilobytes
        #expect(after - settled < 2048, "resident memory grew from \(settled) kB to \(after) kB over 3,000 lock waits")
        #expect(eventually { daemon.threadCount == threads }, "\(daemon.threadCount) threads, \(threads) before")
        print("lock-wait churn: \(settled) kB after 500 waits, \(after) kB after 3,500")
    }
}

