// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// Under Debian's libvirt, which starts the back-end itself (`--fd=N -o source=...`), as on a user's host:
/// qemu/libvirt-run defines a transient TCG domain with a virtiofs <filesystem> and boots the test guest.
@Suite("libvirt starts the daemon", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct LibvirtTests {
    static let script = "cat /mnt/host-file && echo from the guest > /mnt/guest-file && mkdir /mnt/dir && ls /mnt"

    /// A share with one host file; runs the guest under libvirt with `options`; checks what the guest read and
    /// wrote, and returns the run and the back-end's log.
    func boot(_ options: [String]) throws -> (result: RunResult, share: String) {
        let share = NSTemporaryDirectory() + "libvirt-share-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: share, withIntermediateDirectories: true)
        try "from the host\n".write(toFile: share + "/host-file", atomically: true, encoding: .utf8)
        let result = try run(["\(repositoryRoot)/qemu/libvirt-run", "--shared-dir", share] + options + ["--", "sh", "-c", Self.script])
        #expect(result.status == 0, "\(result.output) \(result.errors.suffix(3000))")
        #expect(result.output.contains("from the host") && result.output.contains("dir"), "\(result.output)")
        #expect((try? String(contentsOfFile: share + "/guest-file", encoding: .utf8)) == "from the guest\n")
        return (result, share)
    }

    @Test("a <filesystem> naming our binary, default options")
    func defaults() throws {
        let (result, share) = try boot(["--binary", backend])
        defer { try? FileManager.default.removeItem(atPath: share) }
        // libvirt's log of the back-end is ours: it served, from an inherited socket, and ended cleanly.
        #expect(result.errors.contains("swift-virtiofsd: [swift_virtiofsd] waiting for the front-end on fd"), "\(result.errors)")
        #expect(result.errors.contains("front-end disconnected; exiting"), "\(result.errors)")
    }

    @Test("<binary> sub-elements, which libvirt turns into -o flags: cache, sandbox, xattr, locks off, thread pool")
    func subElements() throws {
        let (result, share) = try boot(["--binary", backend, "--cache", "always", "--sandbox", "chroot", "--xattr",
                                        "--no-locks", "--thread-pool", "4"])
        defer { try? FileManager.default.removeItem(atPath: share) }
        #expect(result.errors.contains("-o source=\(share),cache=always,sandbox=chroot,xattr,no_flock,no_posix_lock --thread-pool-size=4"),
                "\(result.errors)")
        #expect(result.errors.contains("(sandbox chroot, seccomp kill, cache always)"), "\(result.errors)")
        #expect(result.errors.contains("with cache=always"), "\(result.errors)")
    }

    @Test("libvirt's default back-end, found through the installed vhost-user descriptor")
    func defaultBackEnd() throws {
        let prefix = "/opt/swift-virtiofsd-libvirt-test"
        let descriptor = "/etc/qemu/vhost-user/40-swift-virtiofsd.json"
        #expect(!FileManager.default.fileExists(atPath: descriptor), "a descriptor is installed already; not touching it")
        guard !FileManager.default.fileExists(atPath: descriptor) else { return }
        defer {
            try? FileManager.default.removeItem(atPath: descriptor)
            try? FileManager.default.removeItem(atPath: prefix)
        }
        let installed = try run(["\(repositoryRoot)/install.sh", "--prefix", prefix, "--json-dir", "/etc/qemu/vhost-user"])
        #expect(installed.status == 0, "\(installed.errors.suffix(2000))")
        let (result, share) = try boot(["--binary", "default"])
        defer { try? FileManager.default.removeItem(atPath: share) }
        // libvirt's own record of the command it ran: the installed binary, picked by the descriptor.
        #expect(result.errors.contains("libvirt started the back-end as: \(prefix)/libexec/swift-virtiofsd --fd="), "\(result.errors)")
        #expect(result.errors.contains("waiting for the front-end on fd"), "\(result.errors)")
    }
}
