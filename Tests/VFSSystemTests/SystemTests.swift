// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import Testing
import VFSSystem

/// Whether `fd` is open in this process.
func isOpen(_ fd: CInt) -> Bool { fcntl(fd, F_GETFD) != -1 }

/// Whether `fd` is open on the file with inode `inode` (another test running in parallel may reuse the number).
func isOpen(_ fd: CInt, on inode: ino_t) -> Bool {
    var st = stat()
    return fstat(fd, &st) == 0 && st.st_ino == inode
}

@Suite("System layer")
struct SystemTests {
    @Test("an OwnedFD closes its descriptor when it goes away, and release() keeps it open")
    func ownership() throws {
        var raw: CInt = -1
        var inode: ino_t = 0
        let path = "/tmp/ownedfd-test-\(getpid())"
        close(creat(path, 0o600))
        defer { unlink(path) }
        do {
            let fd = try FileDescriptor.open(path, flags: .readOnly)
            raw = fd.rawValue
            var st = stat()
            fstat(raw, &st)
            inode = st.st_ino
            #expect(isOpen(raw, on: inode))
        }
        #expect(!isOpen(raw, on: inode))
        let kept = try FileDescriptor.open("/dev/null", flags: .readOnly).release()
        #expect(isOpen(kept))
        close(kept)
    }

    @Test("descriptors pass over a socket with their data, and unclaimed ones are closed")
    func descriptorPassing() throws {
        let pair = try UnixSocket.pair()
        let event = try EventFD()
        let payload: [UInt8] = [1, 2, 3, 4]
        try payload.withUnsafeBytes { try UnixSocket.send(pair.first.borrowed, $0, fds: [event.fd.rawValue, event.fd.rawValue]) }
        var buffer = [UInt8](repeating: 0, count: 4)
        let (count, fds, truncated) = try buffer.withUnsafeMutableBytes { try UnixSocket.receive(pair.second.borrowed, into: $0) }
        #expect(count == 4 && buffer == payload && !truncated)
        #expect(fds.count == 2)
        let first = fds.take(0)!
        let second = fds.take(1)!
        let again = fds.take(0) == nil
        #expect(again)
        // Both received descriptors name the same eventfd as ours.
        EventFD.signal(first.borrowed)
        #expect(event.drain() == 1)
        let raw = second.release()
        #expect(isOpen(raw))
        close(raw)
    }

    @Test("a receiver that takes nothing leaks nothing")
    func unclaimedDescriptorsClose() throws {
        let pair = try UnixSocket.pair()
        // A pipe, whose inode is its own (every eventfd shares one): a test running in parallel may reuse the
        // number, never the pipe.
        var ends: [CInt] = [-1, -1]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        var st = stat()
        #expect(fstat(ends[0], &st) == 0)
        try [UInt8(0)].withUnsafeBytes { try UnixSocket.send(pair.first.borrowed, $0, fds: [ends[0]]) }
        var buffer = [UInt8](repeating: 0, count: 1)
        var received: CInt = -1
        do {
            let (_, fds, _) = try buffer.withUnsafeMutableBytes { try UnixSocket.receive(pair.second.borrowed, into: $0) }
            let taken = fds.take(0)!
            received = taken.release()
            close(received)
        }
        #expect(!isOpen(received, on: st.st_ino))
    }

    @Test("a shared mapping of a memory file sees writes through another mapping")
    func sharedMappings() throws {
        let file = try makeMemoryFile(name: "test", size: 1 << 16)
        let a = try MemoryMapping(fd: file.borrowed, length: 1 << 16)
        let b = try MemoryMapping(fd: file.borrowed, length: 4096, offset: 4096)
        a.base.storeBytes(of: 0xCAFE, toByteOffset: 4096 + 8, as: UInt32.self)
        #expect(b.base.load(fromByteOffset: 8, as: UInt32.self) == 0xCAFE)
        #expect(throws: Errno.invalidArgument) { try MemoryMapping(fd: file.borrowed, length: 0) }
    }

    @Test("errno values keep their meaning")
    func errnoValues() {
        #expect(Errno.noEntry.rawValue == ENOENT)
        #expect(Errno.noFunction.rawValue == ENOSYS)
        #expect(Errno.noEntry.description == "No such file or directory")
        #expect(throws: Errno.noEntry) { _ = try FileDescriptor.open("/nonexistent/path", flags: .readOnly) }
    }

    @Test("statx reports the mount id and never follows a symlink")
    func statxNoFollow() throws {
        let dir = try FileDescriptor.open("/", flags: [.path, .directory])
        let proc = try dir.borrowed.statx("proc")
        #expect(proc.fileType == .directory && proc.mountID != 0)
        let link = try FileDescriptor.open("/proc/self", flags: [.path, .noFollow])
        #expect(try link.borrowed.statx("").fileType == .symbolicLink)
        #expect(try link.borrowed.stat().fileType == .symbolicLink)
    }
}

@Suite("Interval reports")
struct IntervalReportTests {
    @Test("an occurrence is reported at most once per interval, with the count of those that were not")
    func oncePerInterval() {
        let second: Int64 = 1_000_000_000
        let report = IntervalReport(intervalNanoseconds: 10 * second)
        #expect(report.occurrence(now: 100 * second) == 0)
        #expect(report.occurrence(now: 101 * second) == nil)
        #expect(report.occurrence(now: 109 * second) == nil)
        #expect(report.occurrence(now: 110 * second) == 2)
        #expect(report.occurrence(now: 111 * second) == nil)
        #expect(report.occurrence(now: 125 * second) == 1)
    }
}
