// SPDX-License-Identifier: Apache-2.0

import Foundation
import VhostUserFrontend
import FUSETestSupport
import FUSE
import CVirtioFS
import Glibc
import Testing
import VFSSystem

/// Other local users of the host: they must not reach the socket, nor take it over.
@Suite("The socket belongs to its owner", .serialized)
struct LocalUserTests {
    @Test("the socket is created 0700, so another user cannot connect")
    func socketMode() throws {
        let daemon = try DaemonUnderTest()
        var info = stat()
        #expect(lstat(daemon.socketPath, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o700, "mode \(String(info.st_mode & 0o777, radix: 8))")
        // nobody (65534) tries to connect.
        let result = try runAsNobody(["sh", "-c", "exec 3<>/dev/null; python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' \(daemon.socketPath)"])
        #expect(result != 0, "nobody connected")
        #expect(daemon.isRunning)
    }

    @Test("with --socket-group the socket is 0770 and belongs to that group")
    func socketGroup() throws {
        let daemon = try DaemonUnderTest(["--socket-group", "nogroup"])
        var info = stat()
        #expect(lstat(daemon.socketPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o770, "mode \(String(info.st_mode & 0o777, radix: 8))")
        let group = getgrnam("nogroup")
        #expect(group != nil && info.st_gid == group!.pointee.gr_gid)
    }

    @Test("a second daemon on the same socket path refuses to start and leaves the first one's socket alone")
    func secondDaemon() throws {
        let first = try DaemonUnderTest()
        var before = stat()
        #expect(lstat(first.socketPath, &before) == 0)
        let second = try DaemonUnderTest(socketPath: first.socketPath, waitForSocket: false)
        let status = second.waitForExit(seconds: 10)
        #expect(status != nil && status != 0, "the second daemon did not refuse")
        #expect(second.log.contains(".pid"), "\(second.log)")
        var after = stat()
        #expect(lstat(first.socketPath, &after) == 0 && after.st_ino == before.st_ino, "the socket was replaced")
        // The first daemon still serves its socket.
        let session = try Session(first)
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
    }
}

/// Runs a command as nobody; its exit status.
func runAsNobody(_ arguments: [String]) throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
    process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"] + arguments
    process.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}
