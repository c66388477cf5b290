// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import VFSSystem

extension PassthroughFileSystem {
    /// Runs `body` as the guest user who sent the request, so that what it creates is theirs and the host
    /// kernel checks their permissions. Each queue thread switches on its own (raw setresuid/setresgid).
    /// Resolve descriptors before: opening a file handle needs the daemon's own capabilities.
    func asGuestUser<T: ~Copyable>(_ context: RequestContext, _ body: () throws(Errno) -> T) throws(Errno) -> T {
        let (uid, gid) = try hostCredentials(context)
        guard switchesCredentials, uid.rawValue != 0 || gid.rawValue != 0 else { return try body() }
        // CREATE_SUPP_GROUP: the parent's group, which the caller has as a supplementary group, joins the
        // thread's groups for the request (while still root: setgroups needs CAP_SETGID). If it cannot (a user
        // namespace with setgroups denied, an id outside the map), the request runs without it, as before.
        var joined = false
        if let guestGroup = context.supplementaryGroup, case .id(let group) = options.gidMap.toHost(GuestGID(guestGroup)) {
            joined = (try? ThreadCredentials.setSupplementaryGroup(group.rawValue)) != nil
        }
        defer { if joined { try? ThreadCredentials.clearSupplementaryGroups() } }
        try ThreadCredentials.become(uid: uid.rawValue, gid: gid.rawValue)
        defer { ThreadCredentials.restoreRoot() }
        return try body()
    }

    /// Creates as the guest user, with the guest's umask: applied by the host kernel on this thread when POSIX
    /// ACLs are on (so that a parent's default ACL replaces it, as locally), or here otherwise (where the guest
    /// kernel has applied it already and `umask` is 0).
    func creating<T: ~Copyable>(
        _ context: RequestContext, mode: UInt32, umask: UInt32, _ body: (mode_t) throws(Errno) -> T
    ) throws(Errno) -> T {
        guard options.posixACL else {
            return try asGuestUser(context) { () throws(Errno) -> T in try body(mode_t(mode & ~umask & 0o7777)) }
        }
        let previous = try ThreadCredentials.setThreadUmask(mode_t(umask & 0o777))
        defer { _ = try? ThreadCredentials.setThreadUmask(previous) }
        return try asGuestUser(context) { () throws(Errno) -> T in try body(mode_t(mode & 0o7777)) }
    }

    /// The parent directory of a creating request, after the checks every such request shares.
    func creationParent(_ parent: UInt64, _ name: FUSEName) throws(Errno) -> InodeData {
        try checkWritable()
        let data = try node(parent)
        guard data.fileType == .directory else { throw .notDirectory }
        try validate(name)
        return data
    }

    func validate(_ name: FUSEName) throws(Errno) {
        // SAFETY: reads the name's bytes, valid during the request.
        guard name.isValidComponent, !name.isDot, !name.isDotDot else {
            throw unsafe name.bytes.count > 255 ? .nameTooLong : .invalidArgument
        }
    }

    /// A file's `O_PATH` descriptor, from an open descriptor of it (same inode, through the magic link).
    func pathDescriptor(of fd: borrowing OwnedFD) throws(Errno) -> OwnedFD {
        // SAFETY: the decimal name is a temporary C string, valid for the call.
        try unsafe Self.withDecimal(fd.rawValue) { (name) throws(Errno) -> OwnedFD in
            try unsafe procSelf.fd.borrowed.open(name, flags: [.path])
        }
    }

    /// Gives a new file the security label the guest sent with its creation (`--security-label`). The label is
    /// set just after the file is made: if it cannot be set, the request fails and the file stays, unlabelled.
    /// Symlinks are not labelled (their xattrs cannot be reached through `/proc/self/fd`).
    func label(_ path: UnsafePointer<CChar>, _ context: RequestContext) throws(Errno) {
        // SAFETY: the label's name and value are views of the request, valid for the call.
        guard options.securityLabel, let label = context.securityContext else { return }
        // The label's name is NUL-terminated in the request: a FUSE name, mapped as any xattr name is.
        let name = unsafe FUSEName(bytes: UnsafeRawBufferPointer(start: label.nameCString, count: strlen(label.nameCString)))
        try unsafe withHostName(name) { (hostName) throws(Errno) in
            try unsafe PathCalls.setExtendedAttribute(path, hostName, label.value, flags: 0)
        }
    }

    /// Labels a node just looked up after its creation.
    func label(_ entry: Entry, _ context: RequestContext) throws(Errno) {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        guard options.securityLabel, context.securityContext != nil, let data = inodes.get(entry.nodeID),
              data.fileType != .symbolicLink
        else { return }
        try unsafe withProcPath(of: data) { (path) throws(Errno) in try unsafe label(path, context) }
    }

    /// Labels `entry` (see `label`) and returns it; on failure its lookup is given back.
    func labelled(_ entry: Entry, _ context: RequestContext) throws(Errno) -> Entry {
        do throws(Errno) {
            try label(entry, context)
        } catch {
            inodes.forget(entry.nodeID, count: 1)
            throw error
        }
        return entry
    }

    /// Registers a file just created through `fd` as a node, and `fd` as a handle.
    ///
    /// When the guest does not open files (`opensFiles`), the file gets handle 0 and `fd` is closed: the kernel
    /// then sends no RELEASE for any file, even one CREATE opened, so a handle would never be given back (a
    /// handle per file created ran the daemon out of descriptors in a `git add` of 28,000 files). The guest
    /// writes it through handle 0 like any other file. An O_TMPFILE file, which has no name, is pinned to its
    /// node instead, or the host would free it with the descriptor.
    func register(created fd: consuming OwnedFD, flags: CInt, parent: InodeData, context: RequestContext) throws(Errno) -> (Entry, OpenReply) {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        try unsafe withProcPath(fd.rawValue) { (path) throws(Errno) in try unsafe label(path, context) }
        let path = try pathDescriptor(of: fd)
        let stat = try unsafe path.borrowed.statx("")
        let data = try node(for: path, stat)
        if !opensFiles {
            if flags & CVFS_O_TMPFILE == CVFS_O_TMPFILE, !data.holdsDescriptor { _ = data.pin(try pathDescriptor(of: fd)) }
            return (entry(data, stat, parent: parent, created: true), OpenReply(handle: 0, flags: fileOpenFlags))
        }
        let handle = handles.insert(fd, writer: tracksChanges ? data : nil, appending: flags & O_APPEND != 0)
        return (entry(data, stat, parent: parent, created: true), OpenReply(handle: handle, flags: fileOpenFlags))
    }

    public func mknod(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, device: UInt32, umask: UInt32) throws(Errno) -> Entry {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let dir = try creationParent(parent, name)
        try withPath(dir) { (fd) throws(Errno) in
            // `creating` keeps the permission bits; the file-type bits go back on for mknod.
            try creating(context, mode: mode, umask: umask) { (m) throws(Errno) in
                try unsafe fd.makeNode(name.cString, mode: m | (mode & 0o170000), device: dev_t(device))
            }
        }
        noteOwnChange(dir)
        return try unsafe labelled(lookupEntry(dir, name.cString, isDotDot: false, isDot: false, created: true), context)
    }

    public func mkdir(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, umask: UInt32) throws(Errno) -> Entry {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let dir = try creationParent(parent, name)
        try withPath(dir) { (fd) throws(Errno) in
            try creating(context, mode: mode, umask: umask) { (m) throws(Errno) in try unsafe fd.makeDirectory(name.cString, mode: m) }
        }
        noteOwnChange(dir)
        return try unsafe labelled(lookupEntry(dir, name.cString, isDotDot: false, isDot: false, created: true), context)
    }

    public func symlink(_ context: RequestContext, parent: UInt64, name: FUSEName, target: FUSEName) throws(Errno) -> Entry {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let dir = try creationParent(parent, name)
        guard unsafe !target.bytes.isEmpty, unsafe target.bytes.count < 4096 else { throw unsafe target.bytes.isEmpty ? .noEntry : .nameTooLong }
        try withPath(dir) { (fd) throws(Errno) in
            try asGuestUser(context) { () throws(Errno) in try unsafe fd.makeSymbolicLink(name.cString, target: target.cString) }
        }
        noteOwnChange(dir)
        return try unsafe lookupEntry(dir, name.cString, isDotDot: false, isDot: false, created: true)
    }

    public func link(_ context: RequestContext, node: UInt64, newParent: UInt64, newName: FUSEName) throws(Errno) -> Entry {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let dir = try creationParent(newParent, newName)
        let existing = try self.node(node)
        guard existing.fileType != .directory else { throw .notPermitted }
        try unsafe withProcPath(of: existing) { (path) throws(Errno) in
            try withPath(dir) { (fd) throws(Errno) in try unsafe PathCalls.link(path, in: fd, as: newName.cString) }
        }
        noteOwnChange(dir)
        return try unsafe lookupEntry(dir, newName.cString, isDotDot: false, isDot: false, created: true)
    }

    /// Before a name goes (unlink, rmdir, a rename over it): when the guest does not open files and holds the
    /// named file's node by handle, and this is the file's last name, pins the file with an `O_PATH` descriptor
    /// until the node is forgotten (see `InodeData.pinned`). A guest reading a file it unlinked is not sending
    /// OPEN, so nothing else would keep the host's inode. (A file with another name lives on without a pin:
    /// pinning every unlinked name held one descriptor per object git links into place and unlinks, and
    /// ran the daemon out of descriptors.) Best effort: a name that changes meanwhile, or a full descriptor
    /// table, pins nothing.
    func pinVictim(in dirFD: FileDescriptor, _ name: FUSEName) {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        guard !opensFiles, options.inodeFileHandles != .never,
              let stat = try? unsafe dirFD.statx(name.cString),
              stat.fileType == .directory || (stat.fileType == .regular && stat.linkCount == 1),
              let data = inodes.find(key: InodeKey(stat)), !data.holdsDescriptor, data.pinnedFD == nil,
              let fd = try? unsafe dirFD.open(name.cString, flags: [.path, .noFollow]),
              let check = try? unsafe fd.borrowed.statx(""), InodeKey(check) == data.key
        else { return }
        _ = data.pin(fd)
    }

    public func unlink(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let dir = try creationParent(parent, name)
        try withPath(dir) { (fd) throws(Errno) in
            pinVictim(in: fd, name)
            try unsafe fd.unlink(name.cString, directory: false)
        }
        noteOwnChange(dir)
    }

    public func rmdir(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let dir = try creationParent(parent, name)
        try withPath(dir) { (fd) throws(Errno) in
            pinVictim(in: fd, name)
            try unsafe fd.unlink(name.cString, directory: true)
        }
        noteOwnChange(dir)
    }

    public func rename(_ context: RequestContext, parent: UInt64, name: FUSEName, newParent: UInt64, newName: FUSEName, flags: UInt32) throws(Errno) {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let from = try creationParent(parent, name)
        let to = try creationParent(newParent, newName)
        let known = CVFS_RENAME_NOREPLACE | CVFS_RENAME_EXCHANGE | CVFS_RENAME_WHITEOUT
        guard flags & ~known == 0 else { throw .invalidArgument }
        // WHITEOUT makes a character device: that needs the guest user's creation rights, as mknod.
        // The file that moves gets a new ctime: found first, so that it is not taken for another party's change.
        var moved: InodeData? = nil
        try withPath(from) { (source) throws(Errno) in
            try withPath(to) { (target) throws(Errno) in
                if flags & CVFS_RENAME_EXCHANGE == 0 { pinVictim(in: target, newName) }
                if tracksChanges, let stat = try? unsafe source.statx(name.cString) { moved = inodes.find(key: InodeKey(stat)) }
                try asGuestUser(flags & CVFS_RENAME_WHITEOUT != 0 ? context : RequestContext()) { () throws(Errno) in
                    try unsafe source.rename(name.cString, to: target, newName.cString, flags: flags)
                }
            }
        }
        noteOwnChange(from, to)
        noteOwnChange(moved)
    }

    public func create(_ context: RequestContext, parent: UInt64, name: FUSEName, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply) {
        let dir = try creationParent(parent, name)
        let hostFlags = hostOpenFlags(flags)
        let exclusive = CInt(bitPattern: flags) & O_EXCL != 0
        let fd = try withPath(dir) { (dirFD) throws(Errno) -> OwnedFD in
            try creating(context, mode: mode, umask: umask) { (m) throws(Errno) -> OwnedFD in
                try createOrOpen(in: dirFD, name, flags: hostFlags, mode: m, exclusive: exclusive)
            }
        }
        if hostFlags & O_TRUNC != 0 { try dropRemappedCapability(fd.borrowed) }
        noteOwnChange(dir)
        return try register(created: fd, flags: hostFlags, parent: dir, context: context)
    }

    /// open(2) with O_CREAT, without ever opening what is not a regular file: the file is made with O_EXCL;
    /// if the name exists (and the guest did not ask for O_EXCL) it is held by an `O_PATH` descriptor, its type
    /// is checked on that descriptor, and that very file is opened through it. A device node, FIFO or socket
    /// answers EBADF, a directory EISDIR, a symlink ELOOP (the guest's O_CREAT never follows one here).
    func createOrOpen(in dirFD: FileDescriptor, _ name: FUSEName, flags: CInt, mode: mode_t, exclusive: Bool) throws(Errno) -> OwnedFD {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        // The name can come and go between the two steps; a few tries settle it.
        for _ in 0..<8 {
            do throws(Errno) {
                return try unsafe dirFD.open(name.cString, flags: OpenFlags(rawValue: flags | O_CREAT | O_EXCL | CVFS_O_NOFOLLOW), mode: mode)
            } catch {
                guard error == .fileExists, !exclusive else { throw error }
            }
            let path: OwnedFD
            do throws(Errno) {
                path = try unsafe dirFD.open(name.cString, flags: [.path, .noFollow])
            } catch {
                if error == .noEntry { continue }  // removed meanwhile: create it
                throw error
            }
            switch try path.borrowed.stat().fileType {
            case .regular: return try reopen(path: path.borrowed, flags: flags)
            case .directory: throw .isDirectory
            case .symbolicLink: throw .tooManySymbolicLinks
            default: throw .badFileDescriptor
            }
        }
        throw .noEntry
    }

    public func tmpfile(_ context: RequestContext, parent: UInt64, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply) {
        // SAFETY: the directory's "." is a literal C string; the kernel reads it during the call.
        try checkWritable()
        let dir = try node(parent)
        guard dir.fileType == .directory else { throw .notDirectory }
        let hostFlags = hostOpenFlags(flags) | CVFS_O_TMPFILE
        let fd = try withPath(dir) { (dirFD) throws(Errno) -> OwnedFD in
            try creating(context, mode: mode, umask: umask) { (m) throws(Errno) -> OwnedFD in
                try unsafe dirFD.open(".", flags: OpenFlags(rawValue: hostFlags), mode: m)
            }
        }
        return try register(created: fd, flags: hostFlags, parent: dir, context: context)
    }

    public func setattr(_ context: RequestContext, node: UInt64, changes: AttributeChanges) throws(Errno) -> AttributeReply {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        try checkWritable()
        let data = try self.node(node)
        try apply(changes, to: data, context)
        return try getattr(context, node: node, handle: nil)
    }

    /// SETATTR's changes, in order; what it changed is recorded as this daemon's, even when a later one fails.
    func apply(_ changes: AttributeChanges, to data: InodeData, _ context: RequestContext) throws(Errno) {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        defer { noteOwnChange(data) }
        // Handle 0 of a file the guest did not open (an open with O_TRUNC, ftruncate): by the node, as without one.
        let open = try changes.handle.flatMap { (handle) throws(Errno) -> HandleData? in
            isUnopened(handle) ? nil : try self.handle(handle)
        }
        if let mode = changes.mode {
            if let open {
                try open.withDescriptor { (fd) throws(Errno) in try fd.changeMode(mode_t(mode & 0o7777)) }
            } else {
                guard data.fileType != .symbolicLink else { throw .notSupported }
                try changeMode(of: data, to: mode)
            }
        }
        // HANDLE_KILLPRIV_V2 (a chown of a non-directory, a truncate by a caller without CAP_FSETID): decided on
        // the file as it is before its owner changes, as locally, and applied after.
        let withoutSetIDBits = changes.killSetIDBits ? try modeWithoutSetIDBits(data, context) : nil
        if changes.uid != nil || changes.gid != nil {
            // The new owner and group are guest ids; a forbidden one is EPERM, as chown to an id one may not use.
            var uid = UInt32.max
            var gid = UInt32.max
            if let guest = changes.uid {
                guard case .id(let host) = options.uidMap.toHost(GuestUID(guest)) else { throw .notPermitted }
                uid = host.rawValue
            }
            if let guest = changes.gid {
                guard case .id(let host) = options.gidMap.toHost(GuestGID(guest)) else { throw .notPermitted }
                gid = host.rawValue
            }
            try dropRemappedCapability(data)
            try withPath(data) { (fd) throws(Errno) in try fd.changeOwner(uid: uid, gid: gid) }
        }
        if let size = changes.size {
            guard size <= UInt64(Int64.max) else { throw .invalidArgument }
            if let open {
                try open.withDescriptor { (fd) throws(Errno) in
                    try dropRemappedCapability(fd)
                    try fd.truncate(to: Int64(size))
                }
            } else {
                switch data.fileType {
                case .regular:
                    try dropRemappedCapability(data)
                    try unsafe withProcPath(of: data) { (path) throws(Errno) in try unsafe PathCalls.truncate(path, to: Int64(size)) }
                case .directory: throw .isDirectory
                default: throw .invalidArgument
                }
            }
        }
        if let withoutSetIDBits { try changeMode(of: data, to: withoutSetIDBits) }
        if changes.accessTime != .omit || changes.modificationTime != .omit {
            func spec(_ change: TimeChange) -> timespec {
                switch change {
                case .now: timespec(tv_sec: 0, tv_nsec: (1 << 30) - 1)  // UTIME_NOW
                case .omit: timespec(tv_sec: 0, tv_nsec: (1 << 30) - 2)  // UTIME_OMIT
                case .to(let t): timespec(tv_sec: Int(t.seconds), tv_nsec: Int(t.nanoseconds))
                }
            }
            let times = (spec(changes.accessTime), spec(changes.modificationTime))
            try withPath(data) { (fd) throws(Errno) in try fd.setTimes(times) }
        }
    }

    /// The mode a file keeps once a caller without CAP_FSETID writes or truncates it, or chowns it: set-user-id
    /// goes, and set-group-id when group execution is on or the caller is neither in the file's group nor root
    /// (FUSE_HANDLE_KILLPRIV_V2: the daemon, being root, would otherwise keep them). Nil when nothing changes.
    /// The guest kernel asks with one flag for both bits.
    func modeWithoutSetIDBits(_ data: InodeData, _ context: RequestContext) throws(Errno) -> UInt32? {
        guard data.fileType == .regular else { return nil }
        let stat = try withPath(data) { (fd) throws(Errno) -> FileStat in try fd.stat() }
        let mode = stat.mode
        // The caller's group as the host sees it (a supplementary group is not in these requests: taken as not in
        // the group). Root is taken to have CAP_FSETID, as the guest kernel asks for a root chown too.
        let inGroupOrCapable = context.uid == 0 || (try? hostCredentials(context))?.1.rawValue == stat.gid
        // S_ISUID, S_ISGID and S_IXGRP are fixed by the Linux ABI.
        var cleared = mode & ~UInt32(0o4000)
        if mode & 0o010 != 0 || !inGroupOrCapable { cleared &= ~UInt32(0o2000) }
        return cleared != mode ? cleared : nil
    }

    /// Applies `modeWithoutSetIDBits` now.
    func clearSetIDBits(_ data: InodeData, _ context: RequestContext) throws(Errno) {
        guard let cleared = try modeWithoutSetIDBits(data, context) else { return }
        try changeMode(of: data, to: cleared)
    }

    /// chmod of the node's file (not a symlink's target: through /proc) to the permission bits of `mode`.
    func changeMode(of data: InodeData, to mode: UInt32) throws(Errno) {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        try unsafe withProcPath(of: data) { (path) throws(Errno) in try unsafe PathCalls.changeMode(path, mode_t(mode & 0o7777)) }
    }

    /// Where the host kernel would drop a file's `security.capability` (a write, a truncate, a chown), drops the
    /// guest's one under its remapped host name (`remappedCapability`), by the node. A file without one is no
    /// error.
    func dropRemappedCapability(_ data: InodeData) throws(Errno) {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads it then.
        guard remappedCapability != nil, data.fileType == .regular else { return }
        try unsafe withProcPath(of: data) { (path) throws(Errno) in
            try unsafe removingRemappedCapability { (name) throws(Errno) in try unsafe PathCalls.removeExtendedAttribute(path, name) }
        }
    }

    /// The same through a descriptor open on the file: fremovexattr, about 0.8 µs here against 3.8 µs through
    /// a /proc path (a WRITE pays it under such a map).
    func dropRemappedCapability(_ fd: FileDescriptor) throws(Errno) {
        guard remappedCapability != nil else { return }
        try unsafe removingRemappedCapability { (name) throws(Errno) in try unsafe fd.removeExtendedAttribute(name) }
    }

    /// Runs `remove` with the remapped name. A missing attribute (ENODATA), a file system without them
    /// (ENOTSUP), and a name the daemon may not remove (EPERM, EACCES: a `trusted.` name without CAP_SYS_ADMIN,
    /// an append-only file) are no error: what the daemon cannot remove, it could not have set for the guest
    /// either, and the write itself must not fail for it.
    func removingRemappedCapability(_ remove: (UnsafePointer<CChar>) throws(Errno) -> Void) throws(Errno) {
        // SAFETY: the name is a NUL-terminated array, valid while `remove` runs.
        guard let name = remappedCapability else { return }
        let failure = unsafe name.withUnsafeBufferPointer { (bytes) -> Errno? in
            do throws(Errno) { try unsafe remove(bytes.baseAddress!) } catch { return error }
            return nil
        }
        guard let failure else { return }
        switch failure {
        case .noData, .notSupported, .notPermitted, .permissionDenied: return
        default: throw failure
        }
    }

    public func write(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, from source: WriteSource, killSetIDBits: Bool, fromPageCache: Bool) throws(Errno) -> Int {
        // SAFETY: the guest's buffers are valid during the request; pwritev reads source.length bytes of them.
        try checkWritable()
        guard offset <= UInt64(Int64.max) else { throw .invalidArgument }
        func write(_ fd: FileDescriptor) throws(Errno) -> Int {
            if killSetIDBits { try clearSetIDBits(try self.node(node), context) }
            try dropRemappedCapability(fd)
            guard source.length > 0 else { return 0 }
            return try unsafe fd.write(from: source.buffers, at: Int64(offset))
        }
        // One handle lookup per WRITE: with a writeback cache every write comes from the page cache.
        let open = isUnopened(handle) ? nil : try self.handle(handle)
        if let open, !(fromPageCache && open.appending) {
            // In auto every handle open for writing names its node (`writer`).
            defer { noteOwnChange(open.writer) }
            return try open.withDescriptor(write)
        }
        defer { noteOwnChange(node: node) }
        // Handle 0 of a file the guest did not open; or a page the guest writes back from its cache (a shared
        // mapping, say), which belongs at its offset: the kernel picks any handle of the file open for writing,
        // and through one opened with O_APPEND the host would put the page at the end of the file. (The guest's
        // own appends keep O_APPEND: they land at the host's end of the file even when another writer moved it.)
        let fd = try openFile(node: node, writing: true)
        return try write(fd.borrowed)
    }

    public func fsync(_ context: RequestContext, node: UInt64, handle: UInt64, dataOnly: Bool, directory: Bool) throws(Errno) {
        if directory && handle == 0 && !options.cache.opensDirectories {
            let fd = try openDirectory(try self.node(node))
            try fd.borrowed.sync(dataOnly: dataOnly)
            return
        }
        try withFile(node: node, handle: handle, writing: false) { (fd) throws(Errno) in try fd.sync(dataOnly: dataOnly) }
    }

    public func fallocate(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws(Errno) {
        try checkWritable()
        guard offset <= UInt64(Int64.max), length <= UInt64(Int64.max) else { throw .invalidArgument }
        if distrustsServer && CInt(bitPattern: mode) & CVFS_FALLOC_FL_ZERO_RANGE != 0 { throw .notSupported }
        try withFile(node: node, handle: handle, writing: true) { (fd) throws(Errno) in
            defer { noteOwnChange(node: node) }
            try fd.allocate(mode: CInt(bitPattern: mode), offset: Int64(offset), length: Int64(length))
            try dropRemappedCapability(fd)
        }
        // HANDLE_KILLPRIV_V2: FALLOCATE carries no kill flag, and a local fallocate by an unprivileged caller
        // drops the set-id bits as a write does; the guest leaves that to the server. A non-root caller is taken
        // to lack CAP_FSETID.
        if killprivV2 && context.uid != 0 { try clearSetIDBits(try self.node(node), context) }
    }

    public func lseek(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws(Errno) -> UInt64 {
        // With a writeback cache the guest's kernel asks without writing its dirty pages back first: the host's
        // file can be shorter than the guest's, and SEEK_DATA there would answer ENXIO inside data the guest
        // wrote (a sparse-aware copy would then skip it). ENOSYS makes the guest answer from its own size for
        // good: the whole file is data, which POSIX allows.
        if options.writeback || distrustsServer { throw .noFunction }
        // The guest's loff_t as it is: the host decides what a negative offset means (ENXIO for SEEK_DATA and
        // SEEK_HOLE, as on a local file system).
        return try withFile(node: node, handle: handle, writing: false) { (fd) throws(Errno) -> UInt64 in
            UInt64(try fd.seek(to: Int64(bitPattern: offset), whence: CInt(bitPattern: whence)))
        }
    }

    public func copyFileRange(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64, toOffset: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        try checkWritable()
        guard offset <= UInt64(Int64.max), toOffset <= UInt64(Int64.max), flags <= UInt64(UInt32.max) else { throw .invalidArgument }
        return try withFile(node: node, handle: handle, writing: false) { (from) throws(Errno) -> Int in
            try withFile(node: toNode, handle: toHandle, writing: true) { (to) throws(Errno) -> Int in
                defer { noteOwnChange(node: toNode) }
                try dropRemappedCapability(to)
                return try from.copyRange(
                    offset: Int64(offset), to: to, at: Int64(toOffset), length: Int(min(length, UInt64(Int.max))),
                    flags: UInt32(flags))
            }
        }
    }

    public func setxattr(_ context: RequestContext, node: UInt64, name: FUSEName, value: UnsafeRawBufferPointer, flags: UInt32, killSGID: Bool) throws(Errno) {
        // SAFETY: the name and value are views of the request, valid for the call; the kernel reads value.count bytes.
        guard options.xattr else { throw .noFunction }
        try checkWritable()
        let data = try self.node(node)
        try unsafe withHostName(name) { (hostName) throws(Errno) in
            try unsafe withProcPath(of: data) { (path) throws(Errno) in
                try unsafe PathCalls.setExtendedAttribute(path, hostName, value, flags: CInt(bitPattern: flags))
            }
        }
        noteOwnChange(data)
        // Setting an access ACL: the guest kernel found that the set-group-id bit must go, as it would locally.
        if killSGID {
            let mode = try withPath(data) { (fd) throws(Errno) -> FileStat in try fd.stat() }.mode
            if mode & 0o2000 != 0 { try changeMode(of: data, to: mode & ~UInt32(0o2000)) }
        }
    }

    public func removexattr(_ context: RequestContext, node: UInt64, name: FUSEName) throws(Errno) {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        guard options.xattr else { throw .noFunction }
        try checkWritable()
        let data = try self.node(node)
        try unsafe withHostName(name) { (hostName) throws(Errno) in
            try unsafe withProcPath(of: data) { (path) throws(Errno) in
                try unsafe PathCalls.removeExtendedAttribute(path, hostName)
            }
        }
        noteOwnChange(data)
    }

    public func syncfs(_ context: RequestContext, node: UInt64) throws(Errno) {
        let data = try self.node(node)
        // `reopen` refuses anything but regular files and directories (the guest names a mount's root).
        let fd = try reopen(data, flags: O_RDONLY | CVFS_O_CLOEXEC | (data.fileType == .directory ? CVFS_O_DIRECTORY : 0))
        try fd.borrowed.syncFileSystem()
    }
}
