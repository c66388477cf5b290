// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Foundation
import Glibc
import Testing
import VFSSystem
import VhostUser
import VhostUserFrontend

/// Requests that wait off their queue's thread (a SETLKW, a thread-pool job) while the front-end changes the
/// ground under them: the memory table replaced, the ring stopped, the device reset.
@Suite("A request in flight holds what it uses", .serialized)
struct LifetimeTests {
    /// A file locked by owner 1, and a SETLKW of owner 2 waiting for it; returns the file's node, its handle and
    /// the waiting chain's head.
    func waitingLock(_ session: Session, _ daemon: DaemonUnderTest) throws -> (node: UInt64, handle: UInt64, head: UInt16) {
        daemon.share.write("locked", "data")
        let node = try #require(session.lookup("locked"))
        let (error, handle) = session.open(node, flags: O_RDWR)
        try #require(error == 0)
        #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_WRLCK)) == 0)
        let head = session.requests.submit(
            frame(.setlkw, unique: 777, node: node, uid: 0, gid: 0, Session.lock(handle: handle, owner: 2, type: F_WRLCK)),
            replyLength: 16)
        usleep(200_000)
        try #require(!session.requests.isDone(head), "the SETLKW did not wait")
        return (node, handle, head)
    }

    /// Puts `count` GETATTRs on the request queue and kicks once; their chain heads.
    func submitGetattrs(_ session: Session, _ count: Int) -> [UInt16] {
        let heads = (0..<count).map { _ in
            session.requests.submit(frame(.getattr, unique: session.unique, uid: 0, gid: 0, bytes(fuse_getattr_in())), replyLength: 128, kick: false)
        }
        session.requests.kick.signal()
        return heads
    }

    @Test("a lock wait outlives a memory table replacement and writes its reply into memory that is still mapped")
    func memoryTableReplaced() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        let (node, handle, head) = try waitingLock(session, daemon)
        // As memory hot-plug does: the same memory files, mapped anew; the old mapping is no longer the table.
        try session.frontend.sendMemoryTable()
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
        #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_UNLCK)) == 0)
        let reply = session.requests.wait(for: head, milliseconds: 5000)
        #expect(reply.map { outHeader($0).error } == 0, "the SETLKW's reply: \(reply.map { "\($0.count) bytes" } ?? "none")")
        #expect(reply.map { outHeader($0).unique } == 777)
        #expect(daemon.isRunning, "the daemon died: \(daemon.log)")
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
    }

    @Test("stopping the ring ends a lock wait with EINTR, answered before GET_VRING_BASE; the ring restarts")
    func ringStopped() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        let (_, _, head) = try waitingLock(session, daemon)
        let base = try session.frontend.stopQueue(1)
        #expect(session.requests.isDone(head), "GET_VRING_BASE answered before the waiting request")
        let reply = session.requests.wait(for: head, milliseconds: 100)
        #expect(reply.map { outHeader($0).error } == -EINTR)
        // Started again where it stopped, the queue serves as before.
        try session.frontend.startQueue(1, base: base)
        try session.frontend.enableQueue(1)
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
        #expect(daemon.isRunning, "the daemon died: \(daemon.log)")
    }

    @Test("a reset with a lock wait and pool jobs in flight answers every request the ring handed out",
          arguments: [0, 2])
    func resetWithWork(pool: Int) throws {
        let daemon = try DaemonUnderTest(["--thread-pool-size", "\(pool)"])
        let session = try Session(daemon, queueSize: 1024)
        let (_, _, waiting) = try waitingLock(session, daemon)
        let heads = [waiting] + submitGetattrs(session, 300)
        let base = try session.frontend.stopQueue(1)
        // Every chain the back-end took is answered by now; the rest it never took.
        let done = heads.filter { session.requests.isDone($0) }
        // INIT, LOOKUP, OPEN and SETLK came before: base counts them too.
        #expect(done.count == Int(base &- 4), "\(done.count) answered of \(base &- 4) taken")
        #expect(done.contains(waiting), "the lock wait was not answered")
        try session.frontend.send(.resetDevice)
        _ = try session.frontend.u64(.getFeatures)
        #expect(daemon.isRunning, "the daemon died: \(daemon.log)")
        #expect(eventually { daemon.threadCount == daemon.idleThreads }, "threads left after the reset: \(daemon.threadCount)")
    }

    @Test("SIGTERM or SIGINT with requests in flight: each request the queue took is answered, one log line, status 0",
          arguments: [(SIGTERM, "none"), (SIGINT, "none"), (SIGTERM, "namespace")])
    func stopSignal(signal: Int32, sandbox: String) throws {
        let daemon = try DaemonUnderTest(["--sandbox", sandbox, "--thread-pool-size", "2"])
        let session = try Session(daemon, queueSize: 1024)
        let (_, _, waiting) = try waitingLock(session, daemon)
        let heads = [waiting] + submitGetattrs(session, 300)
        usleep(2_000)
        kill(daemon.pid, signal)
        #expect(daemon.waitForExit(seconds: 10) == 0, "\(daemon.log)")
        // The lock wait was the queue's: it is answered (EINTR), not left for a guest that will never hear.
        let reply = session.requests.wait(for: waiting, milliseconds: 100)
        #expect(reply.map { outHeader($0).error } == -EINTR, "\(daemon.log)")
        // Every answer is whole: a GETATTR's reply, never a torn one.
        for head in heads.dropFirst() where session.requests.isDone(head) {
            #expect(session.requests.wait(for: head, milliseconds: 0).map { outHeader($0).error } == 0)
        }
        let name = signal == SIGTERM ? "SIGTERM" : "SIGINT"
        #expect(daemon.log.split(separator: "\n").filter { $0.contains(name) }.count == 1, "\(daemon.log)")
    }

    @Test("a front-end that goes away with a lock wait in flight: the daemon exits at once, cleanly")
    func frontEndGone() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        _ = try waitingLock(session, daemon)
        UnixSocket.shutdown(session.frontend.connection.socket.borrowed)
        #expect(daemon.waitForExit(seconds: 5) == 0, "\(daemon.log)")
    }
}
