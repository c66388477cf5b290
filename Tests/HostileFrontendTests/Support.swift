// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Foundation
import Glibc
import GuestMemory
import Testing
import VFSSystem
import VhostUser
import VhostUserFrontend
import VirtqueueDriver

/// The repository root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// The daemon under attack: $SWIFT_VIRTIOFSD, or this checkout's debug build (what `swift build` makes).
let daemonBinary: String = ProcessInfo.processInfo.environment["SWIFT_VIRTIOFSD"]
    ?? "\(repositoryRoot)/.build/debug/swift-virtiofsd"

/// A scratch directory, removed when it goes away.
final class Scratch {
    let path: String
    init(_ label: String = "share") {
        path = NSTemporaryDirectory() + "hostile-\(label)-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func write(_ name: String, _ text: String) {
        _ = FileManager.default.createFile(atPath: "\(path)/\(name)", contents: Data(text.utf8))
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// One swift-virtiofsd process under test, serving a scratch share on a scratch socket.
///
/// It runs with `--sandbox none` so that the process the test watches (threads, descriptors, exit status) is
/// the one that serves; seccomp stays at its default, `kill`, so a call outside the allowlist fails the test.
final class DaemonUnderTest {
    let process = Process()
    let share: Scratch
    let socketPath: String
    let logPath: String
    private let ownsShare: Bool

    init(_ arguments: [String] = [], share: Scratch? = nil, socketPath: String? = nil, waitForSocket: Bool = true) throws {
        self.share = share ?? Scratch()
        ownsShare = share == nil
        self.socketPath = socketPath ?? NSTemporaryDirectory() + "hostile-\(UUID().uuidString.prefix(8)).sock"
        logPath = NSTemporaryDirectory() + "hostile-log-" + UUID().uuidString
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: daemonBinary)
        process.arguments = ["--socket-path", self.socketPath, "--shared-dir", self.share.path, "--sandbox", "none"] + arguments
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        if waitForSocket {
            for _ in 0..<400 where !FileManager.default.fileExists(atPath: self.socketPath) && process.isRunning {
                usleep(10_000)
            }
            // The socket appears before the filter is in place; the log line says when it is.
            for _ in 0..<400 where !log.contains("waiting for the front-end") && process.isRunning { usleep(10_000) }
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// What the daemon logged so far.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    /// Log lines at warning level or above.
    var problemLines: [Substring] {
        log.split(separator: "\n").filter { $0.contains("warning") || $0.contains("error") || $0.contains("critical") || $0.contains("fatal") }
    }

    /// Threads of a daemon with no queue started: the one that serves the socket.
    let idleThreads = 1
    /// How many threads the daemon has now.
    var threadCount: Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").count) ?? -1 }
    /// The descriptor count once it stops moving (queue workers set up their epoll on their own threads).
    var settledDescriptorCount: Int {
        var last = descriptorCount
        for _ in 0..<50 {
            usleep(50_000)
            let now = descriptorCount
            if now == last { return now }
            last = now
        }
        return last
    }
    /// The daemon's resident memory (VmRSS), in kB.
    var residentKilobytes: Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
    /// How many descriptors the daemon holds now.
    var descriptorCount: Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }

    /// Waits up to `seconds` for the daemon to end; its exit status, or 128 + the signal that ended it.
    func waitForExit(seconds: Double = 10) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { return nil }
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        unlink(socketPath)
        unlink(socketPath + ".pid")
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

/// One queue as a guest driver uses it: publishes chains, kicks, and waits for the used ring.
final class GuestQueue {
    let driver: VirtqueueDriver
    let kick: EventFD.Box
    let call: EventFD.Box
    /// Where each published chain's reply goes.
    private var replies: [UInt16: (GuestAddress, Int)] = [:]
    /// Completions seen but not yet asked for.
    private var pending: [VirtqueueDriver.Completion] = []

    init(_ frontend: Frontend, _ q: Int) {
        driver = frontend.drivers[q]
        kick = frontend.kicks[q]
        call = frontend.calls[q]
    }

    /// Publishes `request` with `replyLength` bytes of reply room (none: a request without reply) and kicks.
    @discardableResult
    func submit(_ request: [UInt8], replyLength: Int, kick doKick: Bool = true) -> UInt16 {
        // With nothing in flight, the buffer space starts over (a long test would run out of it).
        if replies.isEmpty && pending.isEmpty && driver.allReturned { driver.resetBuffers() }
        let requestAddress = driver.write(request)
        var buffers = [VirtqueueDriver.Buffer(address: requestAddress, length: UInt32(request.count), writable: false)]
        var reply: GuestAddress? = nil
        if replyLength > 0 {
            let address = driver.allocate(replyLength)
            driver.pointer(address).initializeMemory(as: UInt8.self, repeating: 0xEE, count: replyLength)
            buffers.append(VirtqueueDriver.Buffer(address: address, length: UInt32(replyLength), writable: true))
            reply = address
        }
        let head = driver.makeChain(buffers)
        if let reply { replies[head] = (reply, replyLength) }
        driver.publish(head)
        if doKick { kick.signal() }
        return head
    }

    /// Waits up to `milliseconds` for chain `head` to come back; its reply bytes (as many as the device wrote).
    func wait(for head: UInt16, milliseconds: Int = 5000) -> [UInt8]? {
        let deadline = Date().addingTimeInterval(Double(milliseconds) / 1000)
        while true {
            pending += driver.takeUsed()
            if let i = pending.firstIndex(where: { $0.head == head }) {
                let done = pending.remove(at: i)
                guard let (address, capacity) = replies.removeValue(forKey: head) else { return [] }
                return driver.read(address, length: min(Int(done.length), capacity))
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            // As a guest with EVENT_IDX: ask for an interrupt at the next completion, unless one came meanwhile.
            if driver.armUsedEvent() { _ = call.wait(milliseconds: CInt(min(100, max(1, left * 1000)))) }
        }
    }

    /// Whether chain `head` has come back (without waiting).
    func isDone(_ head: UInt16) -> Bool {
        pending += driver.takeUsed()
        return pending.contains { $0.head == head }
    }

    /// Sends one request and waits for its reply.
    func call(_ request: [UInt8], replyLength: Int = 4096, milliseconds: Int = 5000) -> [UInt8]? {
        wait(for: submit(request, replyLength: replyLength), milliseconds: milliseconds)
    }
}

/// A front-end and FUSE session against a daemon: negotiated, memory sent, queues started, INIT done.
final class Session {
    let frontend: Frontend
    let hiprio: GuestQueue
    let requests: GuestQueue
    private var nextUnique: UInt64 = 100

    init(_ daemon: DaemonUnderTest, queueSize: UInt16 = 256, initFlags: UInt64 = 0xffff_ffff, minor: UInt32 = 38, packed: Bool = false) throws {
        frontend = try Frontend(
            socketPath: daemon.socketPath, requestQueues: 1, queueSize: queueSize, memoryPerQueue: 32 << 20, packed: packed)
        hiprio = GuestQueue(frontend, 0)
        requests = GuestQueue(frontend, 1)
        var input = fuse_init_in()
        input.major = 7
        input.minor = minor
        input.max_readahead = 131072
        input.flags = UInt32(truncatingIfNeeded: initFlags)
        input.flags2 = UInt32(truncatingIfNeeded: initFlags >> 32)
        let reply = requests.call(frame(.`init`, unique: 1, bytes(input)), replyLength: 16 + 64)
        try #require(reply != nil && outHeader(reply!).error == 0, "INIT failed")
    }

    var unique: UInt64 {
        nextUnique += 1
        return nextUnique
    }

    /// Sends a request as `uid` and returns its reply (nil: no reply in time).
    func send(_ opcode: FUSEOpcode, node: UInt64 = fuseRootID, uid: UInt32 = 0, _ body: [UInt8] = [], replyLength: Int = 4096, milliseconds: Int = 5000) -> [UInt8]? {
        requests.call(frame(opcode, unique: unique, node: node, uid: uid, gid: uid, body), replyLength: replyLength, milliseconds: milliseconds)
    }

    /// The error of a reply (0: success), or nil when none came.
    func status(_ opcode: FUSEOpcode, node: UInt64 = fuseRootID, uid: UInt32 = 0, _ body: [UInt8] = [], milliseconds: Int = 5000) -> Int32? {
        send(opcode, node: node, uid: uid, body, milliseconds: milliseconds).map { outHeader($0).error }
    }

    /// LOOKUP of `name` under the root; its node id, or nil.
    func lookup(_ text: String) -> UInt64? {
        guard let reply = send(.lookup, name(text)), outHeader(reply).error == 0 else { return nil }
        return payload(reply, as: fuse_entry_out.self).nodeid
    }

    /// OPEN with `flags`; the reply's error and handle.
    func open(_ node: UInt64, flags: Int32, milliseconds: Int = 5000) -> (error: Int32?, handle: UInt64) {
        guard let reply = send(.open, node: node, bytes(fuse_open_in(flags: UInt32(bitPattern: flags), open_flags: 0)), milliseconds: milliseconds)
        else { return (nil, 0) }
        let header = outHeader(reply)
        return (header.error, header.error == 0 ? payload(reply, as: fuse_open_out.self).fh : 0)
    }

    /// MKNOD of `text` under the root with `mode` and `device` (as root); the error.
    func mknod(_ text: String, mode: UInt32, device: UInt32 = 0) -> Int32? {
        var input = fuse_mknod_in()
        input.mode = mode
        input.rdev = device
        return status(.mknod, bytes(input) + name(text))
    }

    /// A lock request body.
    static func lock(handle: UInt64, owner: UInt64, type: Int32, start: UInt64 = 0, end: UInt64 = 99) -> [UInt8] {
        var input = fuse_lk_in()
        input.fh = handle
        input.owner = owner
        input.lk = fuse_file_lock(start: start, end: end, type: UInt32(type), pid: 42)
        return bytes(input)
    }
}

/// Waits until `condition` holds, up to `seconds`; whether it did.
func eventually(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Runs `attack` against a fresh daemon and session (split or packed rings), then checks that the daemon still
/// runs with the threads and descriptors it had, and logged `logLines` problems.
func survive(
    _ what: String, logLines: Int = 1, packed: Bool = false, queueSize: UInt16 = 256,
    _ attack: (Session, DaemonUnderTest) throws -> Void
) throws {
    let daemon = try DaemonUnderTest()
    let session = try Session(daemon, queueSize: queueSize, packed: packed)
    let threads = daemon.threadCount
    let descriptors = daemon.settledDescriptorCount
    try attack(session, daemon)
    #expect(daemon.isRunning, "\(what): the daemon died: \(daemon.log)")
    #expect(daemon.threadCount == threads, "\(what): \(daemon.threadCount) threads, \(threads) before")
    #expect(daemon.descriptorCount <= descriptors, "\(what): \(daemon.descriptorCount) descriptors, \(descriptors) before")
    #expect(daemon.problemLines.count == logLines, "\(what): \(daemon.log)")
}

/// Publishes a chain built by hand from raw descriptors (`build` returns its head, or its id on a packed ring)
/// and waits for it to come back.
func publishRaw(_ session: Session, _ build: (VirtqueueDriver) -> UInt16) -> VirtqueueDriver.Completion? {
    let driver = session.requests.driver
    let head = build(driver)
    driver.publish(head)
    session.requests.kick.signal()
    let deadline = Date().addingTimeInterval(3)
    while Date() < deadline {
        if let done = driver.takeUsed().first(where: { $0.head == head }) { return done }
        usleep(5_000)
    }
    return nil
}
