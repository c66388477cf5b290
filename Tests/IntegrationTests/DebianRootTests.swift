// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// What the job checks in the guest: the journal, dpkg installing and purging local packages, git cloning,
/// committing and checking out. Each step ends the job with an error when it fails.
private let guestChecks = """
    set -eu
    ls /var/log/journal/*/system.journal
    echo "journal lines this boot: $(journalctl -b --no-pager -q | grep -c .)"
    logger -t debian-root-test "written by the guest's job"
    journalctl --flush
    dpkg -i /root/debs/*.deb > /dev/null
    hello
    tree --version > /dev/null
    dpkg --purge hello tree > /dev/null
    if [ -e /usr/bin/hello ] || [ -e /usr/bin/tree ]; then echo "purged packages left files behind"; exit 1; fi
    rm -rf /root/work && mkdir /root/work && cd /root/work
    git init -q origin && cd origin
    echo one > a && git add a && git commit -qm one
    git checkout -q -b side && echo two > b && git add b && git commit -qm two && git checkout -q main
    test ! -e b
    cd .. && git clone -q origin clone && cd clone
    git checkout -q side && test -f b && git log --oneline | wc -l
    test -z "$(git status --porcelain)"
    sync
    echo done > /root/job-done
    """

/// A copy of the cached Debian root with the job's local packages in /root/debs, removed at the end.
private final class DebianRoot {
    let path: String

    init() throws {
        let prepared = try run(["\(repositoryRoot)/qemu/prepare-guest", "--debian"])
        guard prepared.status == 0 else { throw RunError("prepare-guest --debian failed: \(prepared.errors)") }
        path = NSTemporaryDirectory() + "debian-root-" + UUID().uuidString
        let cache = "\(repositoryRoot)/qemu/.cache/debian"
        let copied = try run(["cp", "-a", "\(cache)/root", path])
        guard copied.status == 0 else { throw RunError("copying the root failed: \(copied.errors)") }
        let fm = FileManager.default
        try fm.createDirectory(atPath: path + "/root/debs", withIntermediateDirectories: true)
        for deb in try fm.contentsOfDirectory(atPath: cache + "/debs") {
            try fm.copyItem(atPath: "\(cache)/debs/\(deb)", toPath: "\(path)/root/debs/\(deb)")
        }
        try guestChecks.write(toFile: path + "/root/checks.sh", atomically: true, encoding: .utf8)
    }

    deinit { _ = try? run(["rm", "-rf", path]) }
}

struct RunError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One boot of the Debian guest: the job's output and what run-debian reported about the boot.
private struct DebianBoot {
    let result: RunResult
    /// The units systemd reported failed, from run-debian's summary line.
    var failedUnits: Set<String> {
        guard let line = result.errors.split(separator: "\n").last(where: { $0.contains("failed units:") }),
            let range = line.range(of: "failed units: ")
        else { return ["(no summary line)"] }
        let rest = line[range.upperBound...].split(separator: ";").first ?? ""
        return Set(rest.split(separator: " ").map(String.init).filter { $0 != "none" })
    }
    var booted: Bool { result.errors.contains("boot state=running") || result.errors.contains("boot state=degraded") }

    init(root: DebianRoot, _ options: [String]) throws {
        result = try run(
            ["\(repositoryRoot)/qemu/run-debian", "--root-dir", root.path, "--backend", backend, "--timeout", "600"]
                + options + ["--", "sh", "/root/checks.sh"])
    }
}

@Suite("A Debian system with its root on the share", .serialized, .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
struct DebianRootTests {
    /// The failed units of a boot from an ext4 image of the same tree: the share may not add any.
    static let ext4FailedUnits: Result<Set<String>, any Error> = Result(catching: {
        let root = try DebianRoot()
        let boot = try DebianBoot(root: root, ["--root", "ext4"])
        guard boot.result.status == 0 else { throw RunError("the ext4 boot failed: \(boot.result.errors)") }
        return boot.failedUnits
    })

    @Test(
        "systemd reaches multi-user.target, journald, dpkg and git work, and the host sees every result",
        arguments: [
            ["--cache", "auto"],
            ["--cache", "auto", "--sandbox=namespace", "--seccomp=kill", "--xattr"],
            // QEMU 10 as the front-end (qemu/prepare-peers), in always without sandbox or seccomp.
            ["--cache", "always", "--sandbox=none", "--seccomp=none", "--qemu", "10"],
        ])
    func bootAndWork(_ options: [String]) throws {
        let root = try DebianRoot()
        let journalBefore = journalSize(root.path)
        let boot = try DebianBoot(root: root, ["--root", "share"] + options)
        #expect(boot.result.status == 0, "the job failed: \(boot.result.output)\n\(boot.result.errors)")
        #expect(boot.booted, "systemd did not finish booting: \(boot.result.errors)")
        if options.contains("--qemu") { #expect(boot.result.errors.contains("run-debian: QEMU 10."), "not QEMU 10: \(boot.result.errors)") }
        let ext4Failed = try Self.ext4FailedUnits.get()
        #expect(boot.failedUnits.subtracting(ext4Failed).isEmpty,
            "failed on the share only: \(boot.failedUnits.subtracting(ext4Failed))")
        #expect(boot.result.output.contains("Hello, world!"))

        // The host sees what the guest did.
        let fm = FileManager.default
        #expect(fm.fileExists(atPath: root.path + "/root/job-done"))
        #expect(!fm.fileExists(atPath: root.path + "/usr/bin/hello"), "dpkg --purge left /usr/bin/hello")
        let status = (try? String(contentsOfFile: root.path + "/var/lib/dpkg/status", encoding: .utf8)) ?? ""
        #expect(!status.contains("Package: hello\n"), "dpkg's database still lists hello")
        let log = try run(["git", "-C", root.path + "/root/work/clone", "log", "--format=%s", "side"])
        #expect(log.output == "two\none\n", "git log on the host: \(log.output) \(log.errors)")
        // A short message is stored uncompressed in the journal file.
        let journal = try run(["grep", "-rac", "written by the guest's job", journalDirectory(root.path)])
        #expect(journal.output.split(separator: "\n").contains { !$0.hasSuffix(":0") }, "no journal file holds the job's message")
        #expect(journalSize(root.path) > journalBefore)
    }

    private func journalDirectory(_ root: String) -> String {
        let base = root + "/var/log/journal"
        let machines = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        return base + "/" + (machines.first ?? "")
    }

    private func journalSize(_ root: String) -> Int {
        let dir = journalDirectory(root)
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).reduce(0) {
            $0 + (((try? FileManager.default.attributesOfItem(atPath: dir + "/" + $1))?[.size] as? Int) ?? 0)
        }
    }
}
