// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// The helper every integration test starts its commands with: it must end when the command ends.
@Suite("The tests' command runner")
struct RunnerTests {
    @Test("a command that leaves a process behind, holding its output and its descriptors, still ends the run")
    func leftBehind() throws {
        let started = Date()
        // The daemon-like descendant keeps standard output and every inherited descriptor open for 60 s.
        let result = try run(["sh", "-c", "sleep 60 & echo done; echo on-stderr >&2; exit 3"])
        #expect(Date().timeIntervalSince(started) < 30, "the run waited for the process left behind")
        #expect(result.status == 3)
        #expect(result.output == "done\n")
        #expect(result.errors == "on-stderr\n")
    }

    @Test("a command that outlives its timeout is killed with its process group, status 124")
    func timeout() throws {
        let marker = NSTemporaryDirectory() + "runner-" + UUID().uuidString
        defer { unlink(marker) }
        let result = try run(["sh", "-c", "(sleep 4; touch \(marker)) & sleep 60"], timeout: 1)
        #expect(result.status == 124)
        #expect(result.errors.contains("still running after 1 s; killed"), "\(result.errors)")
        sleep(4)
        #expect(!FileManager.default.fileExists(atPath: marker), "a descendant outlived the timeout")
    }
}
