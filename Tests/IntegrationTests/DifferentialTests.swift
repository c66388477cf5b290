// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

@Suite("Random operations on the share against the guest's tmpfs", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct DifferentialTests {
    /// A short run of qemu/difftest per cache mode (the long runs, 10^5 operations and more, are run by hand):
    /// a seeded random sequence of file operations on /mnt and on the guest's /tmp, every result and the state of
    /// both trees compared after each step.
    @Test("a seeded random sequence of operations gives the same results on the share as on the guest's tmpfs", arguments: [
        ["--cache", "auto"],
        ["--cache", "always"],
        ["--cache", "metadata"],
        ["--cache", "never"],
        // the guest opens no file: handle 0, nodes pinned when their last name goes
        ["--cache", "always", "-o=no_posix_lock,no_flock", "--inode-file-handles=prefer"],
        // The daemon clears set-id bits in every row above (killpriv-v2, on by default; difftest -G: no leniency);
        // here the guest kernel does, by its older rule, which difftest knows.
        ["--cache", "auto", "--no-killpriv-v2"],
    ])
    func sameAsLocal(options: [String]) throws {
        let result = try run(["\(repositoryRoot)/qemu/difftest/run", "--backend", backend, "--seeds", "7", "--ops", "1500"] + options)
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(2000))")
        #expect(result.output.contains("seed 7, 1500 operations, no divergence"), "\(result.output)")
    }
}
