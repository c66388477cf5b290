// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Foundation
import VhostUserFrontend
import VFSSystem
import Glibc
import Testing

/// A guest kernel that is root in the guest makes device nodes and FIFOs on the share, then sends the OPEN and
/// CREATE requests its VFS never would for them (CVE-2020-35517 in virtiofsd).
@Suite("Special files are never opened for the guest", .serialized)
struct SpecialFileTests {
    @Test("OPEN of a character device, a block device, a FIFO or a socket is refused without opening it")
    func openRefused() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        // /dev/null's and /dev/zero's numbers, loop0's (a block device nobody uses), a FIFO.
        #expect(session.mknod("null", mode: UInt32(Glibc.S_IFCHR) | 0o666, device: UInt32(cvfs_makedev(1, 3))) == 0)
        #expect(session.mknod("zero", mode: UInt32(Glibc.S_IFCHR) | 0o666, device: UInt32(cvfs_makedev(1, 5))) == 0)
        #expect(session.mknod("loop", mode: UInt32(Glibc.S_IFBLK) | 0o600, device: UInt32(cvfs_makedev(7, 0))) == 0)
        #expect(session.mknod("fifo", mode: UInt32(Glibc.S_IFIFO) | 0o666) == 0)
        #expect(session.mknod("socket", mode: UInt32(Glibc.S_IFSOCK) | 0o666) == 0)
        for (file, flags) in [("null", O_RDWR), ("zero", O_RDONLY), ("loop", O_RDONLY), ("fifo", O_RDONLY), ("fifo", O_WRONLY), ("socket", O_RDONLY)] {
            let node = try #require(session.lookup(file), "lookup \(file)")
            // A FIFO opened for reading would wait for a writer for ever: the reply must come at once.
            let (error, handle) = session.open(node, flags: flags, milliseconds: 3000)
            #expect(error == -EBADF, "OPEN \(file) with flags \(flags): \(error.map { "error \($0)" } ?? "no reply"), handle \(handle)")
            if handle != 0 {
                var read = fuse_read_in()
                read.fh = handle
                read.size = 16
                let reply = session.send(.read, node: node, bytes(read), milliseconds: 1000)
                Issue.record("READ of \(file) through the handle: \(reply.map { "error \(outHeader($0).error), \($0.count) bytes" } ?? "no reply")")
            }
        }
        // The device nodes are still what the guest made: its own kernel opens them, never the host's.
        var info = stat()
        #expect(stat("\(daemon.share.path)/loop", &info) == 0 && info.st_mode & S_IFMT == S_IFBLK && info.st_rdev == cvfs_makedev(7, 0))
        // Nothing blocked: the daemon still answers, and exits when the front-end goes away.
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
        UnixSocket.shutdownBoth(session.frontend)
        #expect(daemon.waitForExit(seconds: 10) == 0, "the daemon did not exit: \(daemon.log)")
    }

    @Test("CREATE without O_EXCL over an existing device node or FIFO fails and opens nothing")
    func createOverSpecial() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        #expect(session.mknod("zero", mode: UInt32(Glibc.S_IFCHR) | 0o666, device: UInt32(cvfs_makedev(1, 5))) == 0)
        #expect(session.mknod("fifo", mode: UInt32(Glibc.S_IFIFO) | 0o666) == 0)
        for file in ["zero", "fifo"] {
            var input = fuse_create_in()
            input.flags = UInt32(O_RDWR | O_CREAT)
            input.mode = UInt32(Glibc.S_IFREG) | 0o644
            let reply = session.send(.create, bytes(input) + name(file), milliseconds: 3000)
            let error = reply.map { outHeader($0).error }
            #expect(error != nil && error != 0, "CREATE over \(file): \(error.map { "error \($0)" } ?? "no reply")")
        }
        // A regular file that exists is opened (and truncated when asked), as open(2) with O_CREAT does.
        daemon.share.write("plain", "some text")
        var input = fuse_create_in()
        input.flags = UInt32(O_RDWR | O_CREAT | O_TRUNC)
        input.mode = UInt32(Glibc.S_IFREG) | 0o644
        let reply = try #require(session.send(.create, bytes(input) + name("plain")))
        #expect(outHeader(reply).error == 0)
        var info = stat()
        #expect(stat("\(daemon.share.path)/plain", &info) == 0 && info.st_size == 0)
        // With O_EXCL it is EEXIST.
        input.flags = UInt32(O_RDWR | O_CREAT | O_EXCL)
        #expect(session.status(.create, bytes(input) + name("plain")) == -EEXIST)
    }

    @Test("SYNCFS, locks and fsync on a device node do not open it")
    func otherPaths() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        #expect(session.mknod("fifo", mode: UInt32(Glibc.S_IFIFO) | 0o666) == 0)
        let node = try #require(session.lookup("fifo"))
        let syncfs = session.status(.syncfs, node: node, bytes(fuse_syncfs_in()), milliseconds: 3000)
        #expect(syncfs == -EBADF, "SYNCFS on a FIFO: \(syncfs.map { "error \($0)" } ?? "no reply")")
        let lock = session.status(.setlk, node: node, Session.lock(handle: 0, owner: 1, type: F_WRLCK), milliseconds: 3000)
        #expect(lock != nil && lock != 0, "SETLK on a FIFO: \(lock.map { "error \($0)" } ?? "no reply")")
        let getlk = session.status(.getlk, node: node, Session.lock(handle: 0, owner: 1, type: F_WRLCK), milliseconds: 3000)
        #expect(getlk != nil && getlk != 0, "GETLK on a FIFO: \(getlk.map { "error \($0)" } ?? "no reply")")
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
    }
}

extension UnixSocket {
    /// Ends a test front-end's connection, as QEMU going away does.
    static func shutdownBoth(_ frontend: VhostUserFrontend.Frontend) {
        shutdown(frontend.connection.socket.borrowed)
    }
}
