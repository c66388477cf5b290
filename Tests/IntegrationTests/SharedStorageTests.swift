// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// A GlusterFS volume mounted twice on this machine (qemu/gluster): the two client mounts stand for two hosts
/// that share storage. Coherent set-up (`--coherent`): the mounts' kernel caches and the client's caching
/// translators off, as the README says two hosts need.
let glusterDirectory = "/tmp/gluster-tests"
let glusterVolume = "vfstests"

/// Brings the volume up for each test and takes it down after (up takes about 4 s, down 2.5 s).
@Suite("The share on a distributed file system (GlusterFS), guests on two hosts", .serialized,
       .enabled(if: guestsCanRun, "needs qemu-system-x86_64"))
final class SharedStorageTests {
    let a = "\(glusterDirectory)/a"
    let b = "\(glusterDirectory)/b"

    init() throws {
        let up = try run(["\(repositoryRoot)/qemu/gluster", "up", "--dir", glusterDirectory, "--volume", glusterVolume, "--coherent"],
                         timeout: 600)
        try #require(up.status == 0, "\(up.output)\n\(up.errors)")
    }

    deinit {
        _ = try? run(["\(repositoryRoot)/qemu/gluster", "down", "--dir", glusterDirectory, "--volume", glusterVolume], timeout: 120)
    }

    @Test("conformance: every case observes in the guest what the host observes on the volume, or what it observes locally where the volume itself does worse")
    func conformance() throws {
        let result = try run(["\(repositoryRoot)/qemu/conformance/run", "--backend", backend, "--on", a, "--kernel", "6.12",
                              "--no-readonly"])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(3000))")
        // No sparse case on the volume (see qemu/conformance/run), and no mapped_mtime without a writeback cache;
        // no readonly either, which would not touch the volume (it compares two read-only tmpfs).
        let expected = conformanceCases.filter { $0 != "sparse" && $0 != "mapped_mtime" && $0 != "readonly" }
        for name in expected {
            #expect(result.output.contains("PASS \(name)"), "case \(name) did not pass")
        }
        #expect(result.output.contains("\(expected.count) passed, 0 failed"), "\(result.output)")
        // The daemon clears set-id bits at a write by another user (killpriv-v2), which the volume does not.
        #expect(result.output.contains("PASS setuid_cleared (as locally"), "\(result.output)")
    }

    @Test("difftest: each seed's random operations end in the guest as on the host on the volume, or later")
    func difftest() throws {
        let seeds = (1...5).map(String.init)
        let result = try run(["\(repositoryRoot)/qemu/difftest/run", "--backend", backend, "--on", a,
                              "--seeds", seeds.joined(separator: " "), "--ops", "1500", "--flags", "-F -R"])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(2000))")
        let outcomes = result.output.split(separator: "\n").filter { $0.hasPrefix("seed ") }
        #expect(outcomes.count == seeds.count, "\(result.output)")
        #expect(!outcomes.contains { $0.contains("NOT as on the host") || $0.contains("no outcome") }, "\(result.output)")
    }

    @Test("two guests on the two client mounts, cache auto: lock counters exact, O_EXCL won once, appends whole, close-to-open")
    func twoHosts() throws {
        let result = try run(["\(repositoryRoot)/qemu/two-guests/run", "--cache", "auto", "--backend", backend, "--shared-dirs", "\(a),\(b)"])
        let lines = result.output.split(separator: "\n")
        for check in ["counter-fcntl: ", "counter-flock: ", "excl: ", "append: ", "close-to-open: ", "close-to-open (last): "] {
            #expect(lines.contains { $0.hasPrefix(check) && $0.contains(": holds") }, "\(check)\n\(result.output)\n\(result.errors.suffix(2000))")
        }
    }

    @Test("live migration from a back-end on one client mount to one on the other, find-paths: the guest goes on, every line is on the volume")
    func migrationBetweenHosts() throws {
        let run = try migrate(["--host-action", "rename", "--shared-dirs", "\(a),\(b)"])
        #expect(run.result.status == 0, "\(run.whole)")
        #expect(run.status == "completed", "\(run.whole)")
        #expect(run.whole.contains("guest finished on the destination with status 0"), "\(run.whole)")
        #expect(run.whole.contains("host file has lines 1 to") && run.whole.contains("in order"), "\(run.whole)")
        #expect(run.guest("write-failures") == "write-failures 0", "\(run.whole)")
        #expect(run.guest("checksums")?.hasPrefix("checksums 0 bad") == true, "\(run.whole)")
        #expect(run.guest("keep:") == "keep: kept content" && run.guest("moved:") == "moved: moved content", "\(run.whole)")
    }

    @Test("file handles: refused at start where they cannot outlive the host's inode cache or cross hosts, or a fall-back where the option allows one")
    func fileHandles() throws {
        let socket = NSTemporaryDirectory() + "handles-" + UUID().uuidString + ".sock"
        defer { unlink(socket) }
        for (flag, message) in [("--inode-file-handles=mandatory", "--inode-file-handles=mandatory: the shared directory is on a FUSE file system"),
                                ("--migration-mode=file-handles", "--migration-mode file-handles needs file handles that outlive")] {
            let result = try run(["timeout", "10", backend, "--socket-path", socket, "--shared-dir", a, flag])
            #expect(result.status == 1, "\(flag): \(result.status)\n\(result.errors)")
            #expect(result.errors.contains(message), "\(flag)\n\(result.errors)")
        }
        // prefer: serves with descriptors (it waits for a front-end until timeout ends it).
        let prefer = try run(["timeout", "3", backend, "--socket-path", socket, "--shared-dir", a, "--inode-file-handles=prefer", "--posix-acl"])
        #expect(prefer.errors.contains("every node holds a descriptor") && prefer.errors.contains("waiting for the front-end"), "\(prefer.errors)")
        // The volume is mounted without -o acl: ACLs are not offered to the guest, which checks modes alone.
        #expect(prefer.errors.contains("--posix-acl is off"), "\(prefer.errors)")
    }

    @Test("every brick killed in the middle of a guest's writes: errors to the guest, one log line, the daemon goes on, and nothing written is lost once the bricks are back")
    func brickFailure() throws {
        let result = try run(["\(repositoryRoot)/qemu/brick-failure", "--dir", glusterDirectory, "--volume", glusterVolume, "--backend", backend])
        #expect(result.status == 0, "\(result.output)\n\(result.errors.suffix(2000))")
        #expect(result.output.contains("brick-failure: ok"), "\(result.output)")
    }
}
