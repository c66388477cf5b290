// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// Every case of qemu/conformance/suite.sh, and the read-only check the runner adds for this back-end.
let conformanceCases = [
    "files", "directories", "errors", "rename", "links", "unlink_open", "truncate", "sparse", "append", "mmap",
    "tmpfile", "attributes", "special_files", "permissions", "setuid_cleared", "locks", "build_like", "xattr",
    "acl", "cross_mount", "host_lock", "readonly",
]

@Suite("POSIX conformance in a guest, against a local file system", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct ConformanceTests {
    @Test("every case observes on the mount what it observes on local ext4", arguments: [
        ["--kernel", "6.12"],
        ["--kernel", "6.1", "--cpus", "1"],
        ["--kernel", "6.12", "--inode-file-handles=prefer"],
        ["--kernel", "6.12", "--queues", "2", "--thread-pool-size=2"],
        ["--kernel", "6.12", "--cache", "always"],
    ])
    func suiteMatchesLocal(options: [String]) throws {
        let result = try run(["\(repositoryRoot)/qemu/conformance/run", "--backend", backend] + options)
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        for name in conformanceCases {
            #expect(result.output.contains("PASS \(name)\n"), "case \(name) did not pass")
        }
        #expect(result.output.contains("\(conformanceCases.count) passed, 0 failed"))
    }
}
