// SPDX-License-Identifier: Apache-2.0

import Glibc
import Logging
import VFSSystem

/// How the daemon shuts itself in before serving (`--sandbox`).
public enum SandboxMode: String, Sendable, CaseIterable {
    /// New mount, pid and net namespaces (and a user namespace when not started as root); the shared
    /// directory becomes the root with pivot_root and the old root is detached.
    case namespace
    /// chroot(2) into the shared directory, for containers that already set up namespaces.
    case chroot
    /// No isolation, for debugging.
    case none
}

/// One `--uid-map` or `--gid-map` line, `:namespace_id:host_id:count:`, for a daemon started as a normal user.
public struct NamespaceIDMap: Equatable, Sendable, CustomStringConvertible {
    public var namespaceID: UInt32
    public var hostID: UInt32
    public var count: UInt32

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses `:namespace_id:host_id:count:` (virtiofsd's form; any one character may stand for ':', used the
    /// same way throughout).
    public init(parsing text: String) throws(Invalid) {
        guard let separator = text.first, !separator.isNumber else {
            throw Invalid(description: "'\(text)': the form is :namespace_id:host_id:count:")
        }
        let fields = text.dropFirst().split(separator: separator, omittingEmptySubsequences: false)
        guard text.last == separator, fields.count == 4, fields[3].isEmpty,
              let inside = UInt32(fields[0]), let outside = UInt32(fields[1]), let count = UInt32(fields[2]), count > 0
        else { throw Invalid(description: "'\(text)': the form is :namespace_id:host_id:count:") }
        namespaceID = inside
        hostID = outside
        self.count = count
    }

    public init(namespaceID: UInt32, hostID: UInt32, count: UInt32) {
        self.namespaceID = namespaceID
        self.hostID = hostID
        self.count = count
    }

    public var description: String { ":\(namespaceID):\(hostID):\(count):" }
}

/// What the daemon works with once inside its sandbox.
public struct SandboxResult: ~Copyable {
    /// The shared directory as the daemon now names it ("/" once it is the root).
    public var sharedDirectory: String
    /// `/proc/self/fd`, opened before the old root went away (nil: open it by path as usual).
    public var procSelf: ProcSelfDirectory?
    /// Whether requests can run as their guest's user: as root, or in a user namespace that maps more than the
    /// daemon's own id.
    public var canSwitchCredentials: Bool
}

public enum Sandbox {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Enters the sandbox. In namespace mode the process forks (a new pid namespace takes effect in a child): the
    /// original process waits for the child and exits with its status, and only the child returns.
    public static func enter(
        _ mode: SandboxMode, sharedDirectory: String, uidMaps: [NamespaceIDMap] = [], gidMaps: [NamespaceIDMap] = [],
        logger: Logger
    ) throws(Failure) -> SandboxResult {
        let startedAsRoot = ThreadCredentials.effectiveUID == 0
        func step(_ what: String, _ body: () throws -> Void) throws(Failure) {
            do { try body() } catch { throw Failure(description: "sandbox: \(what): \(error)") }
        }
        switch mode {
        case .none:
            return SandboxResult(sharedDirectory: sharedDirectory, procSelf: nil, canSwitchCredentials: startedAsRoot)
        case .chroot:
            var proc: ProcSelfDirectory? = nil
            try step("open /proc/self/fd") { proc = try ProcSelfDirectory() }
            try step("chroot to \(sharedDirectory)") { try ProcessControl.changeRoot(to: sharedDirectory) }
            return SandboxResult(sharedDirectory: "/", procSelf: proc, canSwitchCredentials: startedAsRoot)
        case .namespace:
            var switches = startedAsRoot
            if !startedAsRoot {
                try enterUserNamespace(uidMaps: uidMaps, gidMaps: gidMaps, logger: logger)
                // Ids beyond the daemon's own exist in the namespace only when maps were given.
                switches = uidMaps.contains { $0.count > 1 } || uidMaps.count > 1
            } else if !uidMaps.isEmpty || !gidMaps.isEmpty {
                throw Failure(description: "sandbox: --uid-map and --gid-map are for a daemon started as a normal user")
            }
            try step("unshare the pid, mount and net namespaces") { try ProcessControl.unshare(user: false, others: true) }
            // The new pid namespace holds our children, not us: the child is its pid 1 and does the work.
            var child: pid_t? = nil
            try step("fork") { child = try ProcessControl.fork() }
            if let child {
                let status = ProcessControl.waitForDaemonChild(child)
                if status == 128 + SIGSYS {
                    logger.error("the daemon was killed by SIGSYS: a system call outside the seccomp allowlist (try --seccomp log to find it)")
                }
                ProcessControl.exitNow(status)
            }
            try step("parent-death signal") { try ProcessControl.setParentDeathSignal(SIGKILL) }
            try step("make mounts private") { try ProcessControl.makeMountsPrivate() }
            try step("mount proc") { try ProcessControl.mountProc(at: "/proc") }
            var proc: ProcSelfDirectory? = nil
            try step("open /proc/self/fd") { proc = try ProcSelfDirectory() }
            try step("bind \(sharedDirectory) on itself") { try ProcessControl.bindOnItself(sharedDirectory) }
            // A second wall behind the daemon's own refusal to open special files: no device node on the share
            // opens as a device, whoever made it (the guest can still make them and see them as devices).
            try step("make \(sharedDirectory) nodev") { try ProcessControl.forbidDevices(under: sharedDirectory) }
            try step("pivot_root to \(sharedDirectory)") { try ProcessControl.pivotRoot(to: sharedDirectory) }
            return SandboxResult(sharedDirectory: "/", procSelf: proc, canSwitchCredentials: switches)
        }
    }

    /// A normal user's way in: a child enters a new user namespace, the parent (still outside) writes its id
    /// maps, directly for the user's own ids or through newuidmap/newgidmap for the ranges of /etc/subuid, and
    /// then only waits. The child continues as root of the namespace.
    static func enterUserNamespace(uidMaps: [NamespaceIDMap], gidMaps: [NamespaceIDMap], logger: Logger) throws(Failure) {
        let uid = ThreadCredentials.effectiveUID
        let gid = ProcessControl.effectiveGroupID
        func makePipe() throws(Failure) -> SyncPipe {
            do { return try SyncPipe() } catch { throw Failure(description: "sandbox: pipe: \(error)") }
        }
        let toParent = try makePipe()
        let toChild = try makePipe()
        let child: pid_t?
        do { child = try ProcessControl.fork() } catch { throw Failure(description: "sandbox: fork: \(error)") }
        if let child {
            var ready: UInt8? = nil
            do { ready = try toParent.wait() } catch {}
            guard ready == 1 else { ProcessControl.exitNow(ProcessControl.waitForDaemonChild(child)) }
            do {
                try writeMaps(for: child, uid: uid, gid: gid, uidMaps: uidMaps, gidMaps: gidMaps)
                try toChild.signal(1)
            } catch {
                logger.error("\(error)")
                try? toChild.signal(0)
            }
            ProcessControl.exitNow(ProcessControl.waitForDaemonChild(child))
        }
        do {
            try ProcessControl.setParentDeathSignal(SIGKILL)
            try ProcessControl.unshare(user: true, others: false)
            try toParent.signal(1)
        } catch {
            try? toParent.signal(0)
            throw Failure(description: "sandbox: a user namespace: \(error) (are unprivileged user namespaces allowed?)")
        }
        var mapped: UInt8? = nil
        do { mapped = try toChild.wait() } catch {}
        guard mapped == 1 else { throw Failure(description: "sandbox: the user namespace's id maps could not be written") }
    }

    static func writeMaps(for pid: pid_t, uid: uid_t, gid: gid_t, uidMaps: [NamespaceIDMap], gidMaps: [NamespaceIDMap]) throws(Failure) {
        func write(_ file: String, _ text: String) throws(Failure) {
            do { try ProcessControl.writeFile("/proc/\(pid)/\(file)", text) } catch {
                throw Failure(description: "sandbox: writing /proc/\(pid)/\(file): \(error)")
            }
        }
        func helper(_ program: String, _ maps: [NamespaceIDMap]) throws(Failure) {
            let arguments = [program, String(pid)] + maps.flatMap { [String($0.namespaceID), String($0.hostID), String($0.count)] }
            let status: Int32
            do { status = try ProcessControl.run(arguments) } catch {
                throw Failure(description: "sandbox: cannot run \(program) (package uidmap): \(error)")
            }
            guard status == 0 else { throw Failure(description: "sandbox: \(arguments.joined(separator: " ")) failed with status \(status)") }
        }
        if uidMaps.isEmpty {
            try write("uid_map", "0 \(uid) 1\n")
        } else {
            try helper("newuidmap", uidMaps)
        }
        if gidMaps.isEmpty {
            // Writing one's own gid map needs setgroups denied first.
            try write("setgroups", "deny")
            try write("gid_map", "0 \(gid) 1\n")
        } else {
            try helper("newgidmap", gidMaps)
        }
    }
}
