// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// The figures and report lines of one `qemu/migrate-guest` run.
struct MigrationRun {
    let result: RunResult
    var lines: [Substring] { result.output.split(separator: "\n") }
    var status: String? {
        lines.first { $0.hasPrefix("migrate-guest: migration ") }?.split(separator: " ").dropFirst(2).first.map(String.init)
    }
    func guest(_ prefix: String) -> String? {
        lines.first { $0.hasPrefix("guest: \(prefix)") }.map { String($0.dropFirst("guest: ".count)) }
    }
    var whole: String { result.output + result.errors }
}

func migrate(_ arguments: [String]) throws -> MigrationRun {
    MigrationRun(result: try run(["\(repositoryRoot)/qemu/migrate-guest", "--backend", backend] + arguments, timeout: 600))
}

/// A guest that keeps files open, appends, renames and reads while it is live-migrated between two QEMU 10
/// processes, each with its own back-end on the same shared directory.
@Suite("Live migration with QEMU 10", .serialized)
struct MigrationTests {
    @Test("find-paths: the migration completes, the writer goes on without an error, every line is on the host, handles opened before still read, a file renamed on the host meanwhile is found, a removed directory the guest holds goes as lost")
    func findPaths() throws {
        let run = try migrate(["--host-action", "rename"])
        #expect(run.result.status == 0, "\(run.whole)")
        #expect(run.status == "completed", "\(run.whole)")
        #expect(run.whole.contains("guest finished on the destination with status 0"), "\(run.whole)")
        #expect(run.whole.contains("in order"), "\(run.whole)")
        #expect(!run.whole.contains("does not have lines"), "\(run.whole)")
        #expect(run.guest("write-failures") == "write-failures 0", "\(run.whole)")
        #expect(run.guest("checksums")?.hasPrefix("checksums 0 bad") == true, "\(run.whole)")
        #expect(run.guest("keep:") == "keep: kept content" && run.guest("moved:") == "moved: moved content", "\(run.whole)")
        #expect(run.guest("after:") == "after: new file", "\(run.whole)")
        // The guest's removed working directory went as lost, under abort, and the destination took it up.
        #expect(run.whole.contains(" lost) and ") && !run.whole.contains("saved 0 nodes") && !run.whole.contains("(0 lost)"),
                "\(run.whole)")
    }

    @Test("a file the guest holds open is deleted on the host: --migration-on-error abort keeps the guest on the source, guest-error moves it and that file's reads fail")
    func deletedFile() throws {
        let aborted = try migrate(["--host-action", "delete"])
        #expect(aborted.status == "failed", "\(aborted.whole)")
        #expect(aborted.whole.contains("guest finished on the source with status 0"), "\(aborted.whole)")
        #expect(aborted.guest("doomed:") == "doomed: doomed content", "\(aborted.whole)")
        #expect(aborted.whole.contains("in order"), "\(aborted.whole)")

        let moved = try migrate(["--host-action", "delete", "--backend-flags", "--migration-on-error guest-error"])
        #expect(moved.status == "completed", "\(moved.whole)")
        #expect(moved.whole.contains("guest finished on the destination with status 0"), "\(moved.whole)")
        #expect(moved.guest("doomed:") == "doomed: error", "\(moved.whole)")
        #expect(moved.guest("keep:") == "keep: kept content", "\(moved.whole)")
        #expect(moved.whole.contains("in order"), "\(moved.whole)")
    }

    @Test("file handles, in the namespace sandbox with seccomp kill: the migration completes, and a file deleted on the host meanwhile is still read through its handle")
    func fileHandlesSandboxed() throws {
        let run = try migrate([
            "--host-action", "delete", "--backend-flags",
            "--migration-mode file-handles --migration-verify-handles --sandbox namespace --seccomp kill",
        ])
        #expect(run.result.status == 0, "\(run.whole)")
        #expect(run.status == "completed", "\(run.whole)")
        #expect(run.whole.contains("guest finished on the destination with status 0"), "\(run.whole)")
        #expect(run.guest("doomed:") == "doomed: doomed content", "\(run.whole)")
        #expect(run.whole.contains("in order"), "\(run.whole)")
    }

    @Test("packed virtqueues (packed=on on both sides): the migration completes and the guest goes on as with split rings")
    func packedRings() throws {
        let run = try migrate(["--packed", "--host-action", "rename"])
        #expect(run.result.status == 0, "\(run.whole)")
        #expect(run.status == "completed", "\(run.whole)")
        #expect(run.whole.contains(" ring packed"), "\(run.whole)")
        #expect(run.whole.contains("guest finished on the destination with status 0"), "\(run.whole)")
        #expect(run.whole.contains("in order"), "\(run.whole)")
        #expect(run.guest("write-failures") == "write-failures 0", "\(run.whole)")
        #expect(run.guest("checksums")?.hasPrefix("checksums 0 bad") == true, "\(run.whole)")
        #expect(run.guest("keep:") == "keep: kept content" && run.guest("moved:") == "moved: moved content", "\(run.whole)")
    }
}
