// SPDX-License-Identifier: Apache-2.0

import Foundation
import VhostUserFrontend
import VFSSystem
import FUSETestSupport
import FUSE
import CVirtioFS
import Glibc
import Testing

/// The filter looks at arguments, not only at call numbers; and a crash says what it was, whatever the filter.
@Suite("Seccomp narrowed by arguments; crashes say what they are", .serialized)
struct SeccompTests {
    /// A daemon that, once its filter is in place, makes the call `probe` names (`--debug-probe`).
    func probe(_ probe: String, seccomp: String = "kill") throws -> (status: Int32?, log: String) {
        let daemon = try DaemonUnderTest(["--seccomp", seccomp, "--debug-probe", probe], waitForSocket: false)
        let status = daemon.waitForExit(seconds: 10)
        return (status, daemon.log)
    }

    @Test("calls the daemon never makes with these arguments kill it",
          arguments: ["unshare-user", "unshare-mount", "clone-namespace", "clone-process", "prctl-dumpable", "ioctl-tiocsti", "tgkill-other"])
    func refused(name: String) throws {
        let (status, log) = try probe(name)
        #expect(status == 128 + SIGSYS, "\(name): status \(status.map(String.init) ?? "running"): \(log)")
    }

    @Test("the same calls with the arguments the daemon uses are allowed",
          arguments: ["unshare-fs", "prctl-name", "clone-thread", "tgkill-self"])
    func allowed(name: String) throws {
        let (status, log) = try probe(name)
        #expect(status == 0, "\(name): status \(status.map(String.init) ?? "running"): \(log)")
        #expect(log.contains("probe \(name): allowed"), "\(log)")
    }

    @Test("clone3, whose flags a filter cannot read, answers ENOSYS, so threads are made with clone")
    func clone3() throws {
        let (status, log) = try probe("clone3")
        #expect(status == 0, "\(log)")
        #expect(log.contains("probe clone3: ENOSYS") || log.contains("probe clone3: Function not implemented"), "\(log)")
    }

    @Test("a crash ends in one line naming the signal and the thread, under every seccomp mode",
          arguments: ["kill", "log", "trap", "none"])
    func crashReported(seccomp: String) throws {
        for (crash, signal, cause) in [("crash-trap", SIGILL, "SIGILL"), ("crash-segv", SIGSEGV, "SIGSEGV")] {
            let (status, log) = try probe(crash, seccomp: seccomp)
            #expect(status == 128 + signal, "\(crash) under seccomp \(seccomp): status \(status.map(String.init) ?? "running"): \(log)")
            let lines = log.split(separator: "\n").filter { $0.contains("fatal") }
            #expect(lines.count == 1, "\(crash) under \(seccomp): \(log)")
            #expect(lines.first.map { $0.contains(cause) && $0.contains("crash-probe") } == true, "\(log)")
            #expect(!log.contains("SIGSYS"), "\(log)")
        }
    }
}
