// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// install.sh's static build, run where no Swift toolchain is: the toolchain's folder hidden by an empty mount.
@Suite("Installing the daemon", .serialized)
struct InstallTests {
    /// The toolchain's `usr` (where libswiftCore.so lives), from the `swift` on PATH.
    static var toolchain: String? {
        guard let swift = try? run(["sh", "-c", "readlink -f \"$(command -v swift)\""]).output.trimmingCharacters(in: .whitespacesAndNewlines),
              !swift.isEmpty else { return nil }
        return URL(fileURLWithPath: swift).deletingLastPathComponent().deletingLastPathComponent().path
    }

    @Test("install.sh puts a daemon that runs without the toolchain, its manual and a vhost-user descriptor under a prefix, and a guest mounts its share")
    func staticBinary() throws {
        let toolchain = try #require(Self.toolchain, "no swift on PATH")
        let stage = NSTemporaryDirectory() + "install-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: stage) }
        let installed = try run(["\(repositoryRoot)/install.sh", "--prefix", "/opt/swift-virtiofsd", "--destdir", stage])
        #expect(installed.status == 0, "\(installed.errors.suffix(2000))")
        let binary = stage + "/opt/swift-virtiofsd/libexec/swift-virtiofsd"
        let descriptor = try String(contentsOfFile: stage + "/opt/swift-virtiofsd/share/qemu/vhost-user/40-swift-virtiofsd.json", encoding: .utf8)
        let json = try JSONSerialization.jsonObject(with: Data(descriptor.utf8)) as? [String: String]
        #expect(json?["type"] == "fs" && json?["binary"] == "/opt/swift-virtiofsd/libexec/swift-virtiofsd", "\(descriptor)")
        let manual = try String(contentsOfFile: stage + "/opt/swift-virtiofsd/share/man/man1/swift-virtiofsd.1", encoding: .utf8)
        #expect(manual.contains("-shared-dir") && manual.contains("-inode-file-handles") && manual.contains("-print-capabilities"))

        // With the toolchain hidden, the ordinary build cannot start; the installed one can.
        func hidden(_ command: String) throws -> RunResult {
            try run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none '\(toolchain)' && \(command)"])
        }
        let dynamic = try hidden("'\(backend)' --version")
        #expect(dynamic.status != 0 && dynamic.errors.contains("libswift"), "the toolchain was not hidden: \(dynamic.output) \(dynamic.errors)")
        let version = try hidden("'\(binary)' --version && '\(binary)' --print-capabilities")
        #expect(version.status == 0 && version.output.contains("swift-virtiofsd") && version.output.contains("separate-options"),
                "\(version.output) \(version.errors)")

        // And it serves a guest, toolchain still hidden (run-guest starts it through this wrapper).
        guard guestsCanRun else { return }
        let wrapper = stage + "/hidden-swift-virtiofsd"
        try "#!/bin/sh\nexec unshare -m sh -c 'mount -t tmpfs none \"\(toolchain)\" && exec \"$0\" \"$@\"' '\(binary)' \"$@\"\n"
            .write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        let share = stage + "/share"
        try FileManager.default.createDirectory(atPath: share, withIntermediateDirectories: true)
        try "from the host\n".write(toFile: share + "/host-file", atomically: true, encoding: .utf8)
        let guest = try runGuest(share, [], "cat /mnt/host-file && echo from the guest > /mnt/guest-file", backend: wrapper)
        #expect(guest.status == 0 && guest.output.contains("from the host"), "\(guest.output) \(guest.errors.suffix(2000))")
        #expect((try? String(contentsOfFile: share + "/guest-file", encoding: .utf8)) == "from the guest\n")
    }
}
