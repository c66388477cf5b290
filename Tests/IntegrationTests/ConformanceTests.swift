// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// Every case of qemu/conformance/suite.sh, and the read-only check the runner adds for this back-end.
let conformanceCases = [
    "files", "directories", "errors", "rename", "links", "unlink_open", "truncate", "sparse", "sparse_written", "append", "mmap",
    "mapped_mtime", "birth_time", "supp_group", "tmpfile", "attributes", "special_files", "permissions", "setuid_cleared", "locks", "build_like", "xattr",
    "acl", "cross_mount", "host_lock", "readonly",
]

@Suite("POSIX conformance in a guest, against a local file system", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct ConformanceTests {
    @Test("every case observes on the mount what it observes on local ext4", arguments: [
        ["--kernel", "6.12"],
        ["--kernel", "6.1", "--cpus", "1"],
        // With a writeback cache: times of writes through a mapping change at the fault, as locally (mapped_mtime).
        // The rows with --no-readonly leave out the second guest that checks --readonly: four rows check it.
        ["--kernel", "6.12", "--queues", "2", "--thread-pool-size=2", "--writeback", "--no-readonly"],
        // always with locks local: the guest opens no file (OPEN is ENOSYS) and reads and writes with handle 0;
        // with nodes held by file handle, so that an unlinked file the guest still reads must be pinned.
        ["--kernel", "6.12", "--cache", "always", "-o=no_posix_lock,no_flock", "--inode-file-handles=prefer", "--no-readonly"],
        // Everything on: the namespace sandbox, seccomp killing on any call outside the allowlist (so every
        // operation of the suite checks the list), capabilities dropped, nodes held by file handle (so
        // open_by_handle_at and the capability it needs are checked too), and an id map that keeps every id but
        // runs the translation on every request and attribute. (No POSIX ACLs with a map: no acl case.)
        ["--kernel", "6.12", "--sandbox=namespace", "--seccomp=kill", "--inode-file-handles=prefer",
         "--translate-uid=map:0:0:4294967295", "--translate-gid=map:0:0:4294967295"],
        // always with host locks, and every xattr name kept under user.virtiofs. on the host: the guest sees its
        // own names as before.
        ["--kernel", "6.12", "--cache", "always", "--xattrmap=:map::user.virtiofs.:", "--no-readonly"],
        // QEMU 10 as the front-end (qemu/prepare-peers), with packed virtqueues: every case through
        // VIRTIO_F_RING_PACKED. (QEMU 10 with split rings: the tree comparison, the migrations.)
        ["--kernel", "6.12", "--qemu", "10", "--packed"],
    ])
    func suiteMatchesLocal(options: [String]) throws {
        let result = try run(["\(repositoryRoot)/qemu/conformance/run", "--backend", backend] + options)
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        if options.contains("--packed") { #expect(result.errors.contains(", ring packed,"), "not a packed ring: \(result.errors.suffix(500))") }
        var expected = options.contains { $0.hasPrefix("--translate-") } ? conformanceCases.filter { $0 != "acl" } : conformanceCases
        if options.contains(where: { $0.contains("no_flock") }) { expected.removeAll { $0 == "host_lock" } }
        if options.contains(where: { $0.hasPrefix("--xattrmap") }) { expected.removeAll { $0 == "acl" } }
        if options.contains("--no-readonly") { expected.removeAll { $0 == "readonly" } }
        // With a writeback cache the guest answers SEEK_DATA/SEEK_HOLE itself; without one a mapped write's time
        // comes with its writeback; a 6.1 guest has neither STATX nor CREATE_SUPP_GROUP.
        expected.removeAll { $0 == (options.contains("--writeback") ? "sparse" : "mapped_mtime") }
        if options.contains("6.1") { expected.removeAll { $0 == "birth_time" || $0 == "supp_group" } }
        for name in expected {
            #expect(result.output.contains("PASS \(name)\n"), "case \(name) did not pass")
        }
        #expect(result.output.contains("\(expected.count) passed, 0 failed"))
    }
}
