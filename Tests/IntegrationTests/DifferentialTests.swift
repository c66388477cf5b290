// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

@Suite("Random operations on the share against the guest's tmpfs", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct DifferentialTests {
    /// A short run of qemu/difftest per cache mode (the long runs, 10^5 operations and more, are run by hand):
    /// a seeded random sequence of file operations on /mnt and on the guest's /tmp, every result and the state of
    /// both trees compared after each step.
    /// never runs 500 operations: every one is a round trip there, and 1,500 took five times as long as in auto.
    @Test("a seeded random sequence of operations gives the same results on the share as on the guest's tmpfs", arguments: [
        (["--cache", "auto"], 1500),
        (["--cache", "always"], 1500),
        (["--cache", "never"], 500),
        // the guest opens no file: handle 0, nodes pinned when their last name goes
        (["--cache", "always", "-o=no_posix_lock,no_flock", "--inode-file-handles=prefer"], 1500),
        // The daemon clears set-id bits in every other row (killpriv-v2, on by default; difftest -G: no leniency);
        // here the guest kernel does, by its older rule, which difftest knows.
        (["--cache", "metadata", "--no-killpriv-v2"], 1500),
    ])
    func sameAsLocal(options: [String], operations: Int) throws {
        let result = try run(["\(repositoryRoot)/qemu/difftest/run", "--backend", backend, "--seeds", "7", "--ops", String(operations)]
                             + options)
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(2000))")
        #expect(result.output.contains("seed 7, \(operations) operations, no divergence"), "\(result.output)")
    }
}
