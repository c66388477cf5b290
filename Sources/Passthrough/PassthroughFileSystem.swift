// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Logging
import Synchronization
import VFSSystem

/// How nodes are held (`--inode-file-handles`).
public enum InodeFileHandles: String, Sendable {
    /// Every node holds an `O_PATH` descriptor.
    case never
    /// Nodes hold a kernel file handle where the file system has them, else a descriptor: the number of open
    /// descriptors stays bounded however many files the guest has looked up.
    case prefer
    /// Every node holds a file handle; a lookup on a file system without handles fails.
    case mandatory
}

/// Options of the passthrough file system.
public struct PassthroughOptions: Sendable {
    public var sharedDirectory: String
    public var cache: CachePolicy
    /// Serve extended attributes (`--xattr`); otherwise the xattr operations answer ENOSYS, as virtiofsd.
    public var xattr: Bool
    /// Every request that would change something answers EROFS (`--readonly`).
    public var readOnly: Bool
    /// Offer POSIX record locks to the guest, held on the host (unlike virtiofsd's guest-local ones).
    public var locks: Bool
    /// Offer flock to the guest, held on the host.
    public var flockLocks: Bool
    /// Pass O_DIRECT through to the host (`--allow-direct-io`).
    public var allowDirectIO: Bool
    /// Keep O_NOATIME from the guest (`--preserve-noatime`).
    public var preserveNoatime: Bool
    /// Mark directories on another host mount as submounts (`--announce-submounts`, the default).
    public var announceSubmounts: Bool
    /// FUSE_HANDLE_KILLPRIV_V2 (`--killpriv-v2`): the daemon clears set-id bits on write, truncate and chown, and the
    /// guest stops asking for a file's attributes before each chown to do it itself. nil: on, unless the shared
    /// directory is on a network file system (NFS, SMB), whose server may refuse the daemon's own mode change
    /// (virtiofsd's reason to keep it off everywhere).
    public var killprivV2: Bool?
    /// FUSE_WRITEBACK_CACHE (`--writeback`).
    public var writeback: Bool
    /// `--inode-file-handles`.
    public var inodeFileHandles: InodeFileHandles
    /// POSIX ACLs (`--posix-acl`): the guest kernel applies them and sends the umask (DONT_MASK), which the
    /// host kernel then applies, or a parent's default ACL instead, as on a local file system. Implies xattr.
    public var posixACL: Bool
    /// Security labels on creation (`--security-label`, FUSE_SECURITY_CTX).
    public var securityLabel: Bool
    /// `--translate-uid` and `--translate-gid`: applied to the credentials of every request and to uid and gid
    /// arguments on the way in, and to every attribute on the way out.
    public var uidMap: UIDMap
    public var gidMap: GIDMap
    /// `--xattrmap`: how extended attribute names go between guest and host (nil: unchanged).
    public var xattrMap: XattrMap?
    /// An already open `/proc/self/fd` (a sandbox opens it before the shared directory becomes the root).
    public var procSelf: ProcSelfDirectory?
    /// Whether requests run as their guest user (nil: when the daemon runs as root).
    public var switchCredentials: Bool?
    /// How the session moves in a live migration (`--migration-*`).
    public var migration = MigrationOptions()
    /// The timeouts of `--cache auto`.
    public var autoTimeouts = AutoTimeouts()

    public init(
        sharedDirectory: String, cache: CachePolicy = .auto, xattr: Bool = false, readOnly: Bool = false,
        locks: Bool = true, flockLocks: Bool = true, allowDirectIO: Bool = false, preserveNoatime: Bool = false,
        announceSubmounts: Bool = true, killprivV2: Bool? = false, writeback: Bool = false,
        inodeFileHandles: InodeFileHandles = .never, posixACL: Bool = false, securityLabel: Bool = false,
        uidMap: UIDMap = UIDMap.identity, gidMap: GIDMap = GIDMap.identity, xattrMap: XattrMap? = nil, procSelf: ProcSelfDirectory? = nil,
        switchCredentials: Bool? = nil, migration: MigrationOptions = MigrationOptions()
    ) {
        self.migration = migration
        self.switchCredentials = switchCredentials
        self.uidMap = uidMap
        self.gidMap = gidMap
        self.xattrMap = xattrMap
        self.procSelf = procSelf
        self.securityLabel = securityLabel
        self.inodeFileHandles = inodeFileHandles
        self.posixACL = posixACL
        self.sharedDirectory = sharedDirectory
        self.cache = cache
        self.xattr = xattr || posixACL || securityLabel
        self.readOnly = readOnly
        self.locks = locks
        self.flockLocks = flockLocks
        self.allowDirectIO = allowDirectIO
        self.preserveNoatime = preserveNoatime
        self.announceSubmounts = announceSubmounts
        self.killprivV2 = killprivV2
        self.writeback = writeback
    }
}

/// Serves `--shared-dir` to the guest by running each request as host system calls on it.
///
/// Every node is an `O_PATH` descriptor opened relative to its parent with `O_NOFOLLOW`, from a name that
/// contains no '/': a lookup never follows a symlink and never leaves the shared directory by a path.
/// Files are opened again through `/proc/self/fd` only when they are not symlinks.
public final class PassthroughFileSystem: FileSystem {
    public let options: PassthroughOptions
    public let inodes: InodeStore
    public let handles = HandleTable()
    /// `/proc/self/fd`: files are reopened through it, and named to the calls that take only a path.
    public let procSelf: ProcSelfDirectory
    let logger: Logger
    let lockTable = LockTable()
    let mounts = MountTable()
    /// Whether requests can run as their guest user (the daemon runs as root).
    let switchesCredentials: Bool
    /// Whether the guest opens regular files (OPEN, RELEASE). Not in `always` with host locks off: then OPEN
    /// answers ENOSYS and the kernel stops sending OPEN and RELEASE for the whole session (two round trips per
    /// open(2), two thirds of a build's requests with FLUSH gone too). It assumes KEEP_CACHE, which is what
    /// `always` gives every file anyway, and sends READ, WRITE and the rest with handle 0, which we serve from a
    /// descriptor opened for that request (`withFile`). Host locks need RELEASE: a flock, and an
    /// open-file-description lock (F_OFD_SETLK), end with the guest's open file, and only RELEASE says so.
    let opensFiles: Bool
    /// The host name (NUL-terminated) that `--xattrmap` gives the guest's `security.capability`, when it is
    /// another name. The host kernel drops `security.capability` itself when a file is written, truncated or
    /// chowned, and knows nothing of the other name: the daemon drops it then instead (as virtiofsd does).
    let remappedCapability: [CChar]?
    /// Whether FUSE_HANDLE_KILLPRIV_V2 is offered (`options.killprivV2`, decided for this shared directory).
    let killprivV2: Bool
    /// Whether the shared directory is on a FUSE file system (a GlusterFS or CephFS client, sshfs): its server's
    /// answers to SEEK_DATA/SEEK_HOLE and to a ZERO_RANGE fallocate are not trusted (GlusterFS 10.3 answered
    /// SEEK_HOLE on one unchanged file with 4096, 4 and -1, and reads after ZERO_RANGE returned old bytes).
    /// LSEEK then answers ENOSYS (the guest's kernel takes the whole file as data, which POSIX allows) and
    /// ZERO_RANGE EOPNOTSUPP (callers write zeros instead).
    let distrustsServer: Bool
    /// `--cache auto`: timeouts follow who changed each node and when (ChangeTracking.swift).
    let tracksChanges: Bool
    /// The timeout of every reply in the other modes (`options.cache.timeout`), at hand.
    let fixedTimeout: Timeout
    /// `options.autoTimeouts`, at hand.
    let autoShort: Timeout
    let autoLong: Timeout
    let recentWindow: Int64
    /// Added to the wall clock when timeouts are decided: tests move time on with it (`skewClock`).
    let clockSkew = Atomic<Int64>(0)
    /// `--cache auto`: the guest threads whose OPEN was refused as stale a moment ago.
    let staleOpenRefusals = StaleOpenRefusals()

    /// File systems where the daemon does not clear set-id bits itself unless told to: NFS, CIFS and SMB2.
    static let networkFileSystems: Set<UInt64> = [0x6969, 0xFF53_4D42, 0xFE53_4D42]
    /// FUSE_SUPER_MAGIC: a file system served by a user-space process.
    static let fuseFileSystem: UInt64 = 0x6573_5546

    /// Whether to offer FUSE_HANDLE_KILLPRIV_V2: as `setting` says, or when it says nothing, unless the shared
    /// directory's file system (`fileSystemType`, fstatfs's magic; nil when unknown) is a network one.
    static func offersKillprivV2(_ setting: Bool?, fileSystemType: UInt64?) -> Bool {
        setting ?? !(fileSystemType.map { networkFileSystems.contains($0) } ?? false)
    }

    /// Opens the shared directory and `/proc/self/fd`.
    public init(options: PassthroughOptions, logger: Logger) throws(Errno) {
        // SAFETY: the shared directory's C string lives for the open call.
        self.logger = logger
        let root = try FileDescriptor.open(options.sharedDirectory, flags: [.path, .directory])
        let stat = try unsafe root.borrowed.statx("")
        if let given = options.procSelf {
            procSelf = given
        } else {
            procSelf = try ProcSelfDirectory()
        }
        try ProcessControl.changeDirectory(to: procSelf.fd.borrowed)
        var options = options
        if options.posixACL && options.xattrMap == nil && !Self.hasPOSIXACLs(root.borrowed) {
            // A guest told of ACLs asks for one at every permission check, and takes EOPNOTSUPP as the check's
            // answer: every open of a file another user owns would fail so. Without the flag the guest checks
            // the mode alone and setfacl gets EOPNOTSUPP, as on the host (a GlusterFS client mounted without
            // -o acl, say).
            logger.notice("--posix-acl is off: the shared directory's file system has no POSIX ACLs (system.posix_acl_access: EOPNOTSUPP); extended attributes stay on")
            options.posixACL = false
        }
        let fileSystemType = try? root.borrowed.fileSystemType()
        distrustsServer = fileSystemType == Self.fuseFileSystem
        if distrustsServer {
            logger.notice("the shared directory is on a FUSE file system: SEEK_DATA/SEEK_HOLE are answered by the guest (the whole file is data) and ZERO_RANGE fallocate with EOPNOTSUPP")
            // A FUSE file system's handle names the server's node, and the host kernel can open it again only
            // while it keeps that inode, unless the server exports (GlusterFS 10.3 does not: ESTALE once the
            // inode is dropped, and always on another client mount).
            if options.migration.mode == .fileHandles {
                logger.error("--migration-mode file-handles needs file handles that outlive the host's inode cache and cross hosts, and the shared directory is on a FUSE file system, whose handles do neither; use --migration-mode find-paths")
                throw .notSupported
            }
            switch options.inodeFileHandles {
            case .never: break
            case .prefer:
                logger.notice("--inode-file-handles=prefer: the shared directory is on a FUSE file system, whose handles go stale when the host drops the inode; every node holds a descriptor")
                options.inodeFileHandles = .never
            case .mandatory:
                logger.error("--inode-file-handles=mandatory: the shared directory is on a FUSE file system, whose handles go stale when the host drops the inode; use prefer or never")
                throw .notSupported
            }
        }
        self.options = options
        killprivV2 = Self.offersKillprivV2(options.killprivV2, fileSystemType: fileSystemType)
        if options.killprivV2 == nil && !killprivV2 {
            logger.info("--killpriv-v2 is off: the shared directory is on a network file system (--killpriv-v2 turns it on)")
        }
        inodes = InodeStore(root: root, stat: stat)
        switchesCredentials = options.switchCredentials ?? (ThreadCredentials.effectiveUID == 0)
        opensFiles = !(options.cache == .always && !options.flockLocks && !options.locks)
        tracksChanges = options.cache == .auto
        fixedTimeout = options.cache.timeout
        autoShort = options.autoTimeouts.short
        autoLong = options.autoTimeouts.long
        recentWindow = options.autoTimeouts.recentWindowNanoseconds
        let capability = Array("security.capability".utf8)
        if options.xattr, let map = options.xattrMap, case .name(let host) = map.toHost(capability), host != capability {
            remappedCapability = host.map { CChar(bitPattern: $0) } + [0]
        } else {
            remappedCapability = nil
        }
        LockTable.installWakeSignal()
        if options.inodeFileHandles != .never {
            // The shared directory's mount, so that its files can be held by handle from the first lookup.
            _ = try? holding(inodes.root.fd(), stat)
        }
    }

    /// Whether the file system of `root` keeps POSIX ACLs: asked of the root's access ACL by its /proc name
    /// (relative to /proc/self/fd, the working directory), where only EOPNOTSUPP says no.
    static func hasPOSIXACLs(_ root: FileDescriptor) -> Bool {
        // SAFETY: both C strings live for the call; an empty buffer asks only for the size.
        do throws(Errno) {
            _ = try unsafe withDecimal(root.rawValue) { (path) throws(Errno) -> Int in
                try unsafe ExtendedAttributes.get(path: path, name: "system.posix_acl_access", into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
            }
            return true
        } catch {
            return error != .notSupported
        }
    }

    // MARK: Helpers

    func node(_ id: UInt64) throws(Errno) -> InodeData {
        guard let data = inodes.get(id) else { throw .badFileDescriptor }
        return data
    }

    func handle(_ id: UInt64) throws(Errno) -> HandleData {
        guard let data = handles.get(id) else { throw .badFileDescriptor }
        return data
    }

    /// Whether `handle` is the 0 of a file the guest did not open (see `opensFiles`).
    @inline(__always)
    func isUnopened(_ handle: UInt64) -> Bool { handle == 0 && !opensFiles }

    /// Runs `body` with the descriptor of an open handle, or, for handle 0 when the guest does not open files,
    /// with a descriptor of the node's regular file opened for this request alone (read-only, or write-only
    /// when `writing`). The guest's kernel checked the open itself (virtio-fs mounts with default_permissions).
    func withFile<T>(node: UInt64, handle: UInt64, writing: Bool, _ body: (FileDescriptor) throws(Errno) -> T) throws(Errno) -> T {
        guard isUnopened(handle) else { return try self.handle(handle).withDescriptor(body) }
        // Bound to a name: a temporary's descriptor could be closed before body runs.
        let fd = try openFile(node: node, writing: writing)
        return try body(fd.borrowed)
    }

    /// The node's regular file, opened for one request (read-only, or write-only when `writing`); EBADF for
    /// any other kind of node.
    func openFile(node: UInt64, writing: Bool) throws(Errno) -> OwnedFD {
        let data = try self.node(node)
        guard data.fileType == .regular else { throw .badFileDescriptor }
        return try reopen(data, flags: (writing ? O_WRONLY : O_RDONLY) | CVFS_O_CLOEXEC)
    }

    /// Attributes as the guest sees them: owner and group through the id maps.
    @inline(__always)
    func guestView(_ stat: FileStat) -> FileStat {
        if options.uidMap.isIdentity && options.gidMap.isIdentity { return stat }
        var view = stat
        view.uid = options.uidMap.toGuest(HostUID(stat.uid)).rawValue
        view.gid = options.gidMap.toGuest(HostGID(stat.gid)).rawValue
        return view
    }

    /// The host ids a request's guest credentials stand for; EPERM for a forbidden guest id.
    func hostCredentials(_ context: RequestContext) throws(Errno) -> (HostUID, HostGID) {
        guard case .id(let uid) = options.uidMap.toHost(GuestUID(context.uid)),
              case .id(let gid) = options.gidMap.toHost(GuestGID(context.gid))
        else { throw .notPermitted }
        return (uid, gid)
    }

    /// Open flags for a regular file: the cache mode's, and NOFLUSH when the guest keeps its POSIX locks itself.
    /// FLUSH (one round trip per close(2) in the guest) only tells us that a lock owner closed the file, which
    /// matters only for the POSIX locks held here (flock ends at RELEASE); with POSIX locks off, the guest
    /// releases its own at close.
    /// (With a writeback cache the kernel sends FLUSH anyway, to write its dirty pages first.)
    var fileOpenFlags: FUSEOpenFlags {
        options.locks ? options.cache.fileOpenFlags : options.cache.fileOpenFlags.union(.noFlush)
    }

    /// The entry for `data`, whose attributes `stat` were just read, named in `parent`; `created` when this
    /// request has just made the node's file or given it a name.
    func entry(_ data: InodeData, _ stat: FileStat, parent: InodeData? = nil, created: Bool = false) -> Entry {
        let submount = options.announceSubmounts && stat.fileType == .directory && parent != nil
            && stat.mountID != parent!.key.mountID
        var nameTimeout = fixedTimeout
        var attributeTimeout = nameTimeout
        if tracksChanges {
            if created { data.noteOwnChange(at: WallClock.nanoseconds()) }
            observe(data, stat, telling: true)
            let short = isShortLived(data)
            attributeTimeout = short ? autoShort : autoLong
            // A name lasts no longer than its directory's listing, nor than what it names.
            nameTimeout = short || (parent.map { isShortLived($0) } ?? false) ? autoShort : autoLong
        }
        return Entry(nodeID: data.nodeID, attributes: guestView(stat), entryTimeout: nameTimeout,
                     attributeTimeout: attributeTimeout, isSubmount: submount)
    }

    /// A directory node opened for listing or syncing; ENOTDIR for anything else.
    func openDirectory(_ data: InodeData) throws(Errno) -> OwnedFD {
        guard data.fileType == .directory else { throw .notDirectory }
        return try reopen(data, flags: O_RDONLY | CVFS_O_DIRECTORY | CVFS_O_CLOEXEC)
    }

    /// Opens a node's file for I/O: through `/proc/self/fd/N`, or from its file handle.
    ///
    /// Only regular files and directories are ever opened for the guest (CVE-2020-35517 in virtiofsd): opening
    /// a device node would reach a host device, a FIFO would block the thread, a socket cannot be opened. Their
    /// type is the node's, fixed when it was looked up: the node's descriptor or handle pins that very inode,
    /// so no rename can swap another file in between the check and the open.
    func reopen(_ data: InodeData, flags: CInt) throws(Errno) -> OwnedFD {
        guard data.fileType.canBeOpened else { throw .badFileDescriptor }
        if data.isLost { throw .ioError }
        if let pinned = data.pinnedFD { return try reopen(path: pinned, flags: flags) }
        if let handle = data.handle, let mount = data.mount {
            return try mount.fd.borrowed.open(handle: handle, flags: OpenFlags(rawValue: flags))
        }
        return try reopen(path: data.fd(), flags: flags)
    }

    /// Opens the file an `O_PATH` descriptor names, through `/proc/self/fd/N`: the same inode, never a name
    /// looked up again. The caller has checked that it is a regular file or a directory.
    func reopen(path fd: FileDescriptor, flags: CInt) throws(Errno) -> OwnedFD {
        // SAFETY: the decimal name is a temporary C string, valid for the call.
        try unsafe Self.withDecimal(fd.rawValue) { (name) throws(Errno) -> OwnedFD in
            try unsafe procSelf.fd.borrowed.open(name, flags: OpenFlags(rawValue: flags & ~CVFS_O_NOFOLLOW))
        }
    }

    /// Runs `body` with an `O_PATH` descriptor of the node: its own, or one opened from its handle for the call.
    func withPath<T: ~Copyable>(_ data: InodeData, _ body: (FileDescriptor) throws(Errno) -> T) throws(Errno) -> T {
        if data.descriptor >= 0 { return try body(FileDescriptor(rawValue: data.descriptor)) }
        if let pinned = data.pinnedFD { return try body(pinned) }
        guard let handle = data.handle, let mount = data.mount else { throw data.isLost ? .ioError : .badFileDescriptor }
        let fd = try mount.fd.borrowed.open(handle: handle, flags: [.path, .noFollow])
        return try body(fd.borrowed)
    }

    /// Runs `body` with the `/proc/self/fd` path of the node's file (see `withProcPath(_:_:)`).
    func withProcPath<T>(of data: InodeData, _ body: (UnsafePointer<CChar>) throws(Errno) -> T) throws(Errno) -> T {
        // SAFETY: the path is valid while body runs, and so is the descriptor it names (held by the node or this call).
        try withPath(data) { (fd) throws(Errno) -> T in try unsafe withProcPath(fd.rawValue, body) }
    }

    /// Decides how a new node is held, per `--inode-file-handles`. A file on a mount not seen yet, that is not
    /// itself a directory to open the mount by, keeps its descriptor (or fails, with `mandatory`).
    func holding(_ fd: FileDescriptor, _ stat: FileStat) throws(Errno) -> NodeHolding {
        // SAFETY: the decimal name is a temporary C string, valid for the call.
        guard options.inodeFileHandles != .never else { return .descriptor }
        do throws(Errno) {
            let handle = try fd.fileHandle()
            let mount = try mounts.descriptor(for: handle.mountID) { () throws(Errno) -> OwnedFD in
                guard stat.fileType == .directory else { throw .notSupported }
                return try unsafe Self.withDecimal(fd.rawValue) { (name) throws(Errno) -> OwnedFD in
                    try unsafe procSelf.fd.borrowed.open(name, flags: [.directory])
                }
            }
            return .handle(handle, mount: mount)
        } catch {
            if options.inodeFileHandles == .mandatory { throw error }
            return .descriptor
        }
    }

    /// Adds one lookup to the node of a file just opened as `fd`.
    func node(for fd: consuming OwnedFD, _ stat: FileStat) throws(Errno) -> InodeData {
        try inodes.lookup(key: InodeKey(stat), fileType: stat.fileType, fd: fd) { (fd) throws(Errno) -> NodeHolding in
            try holding(fd, stat)
        }
    }

    /// Runs `body` with the path of a descriptor's file for the calls that only take a path (xattrs, truncate,
    /// chmod): its number "N", relative to the working directory, which `init` made `/proc/self/fd` (the
    /// absolute `/proc/self/fd/N` does not exist inside the sandbox, where the shared directory is the root).
    /// Threads that unshare their file-system state later copy that directory with it.
    func withProcPath<T>(_ fd: CInt, _ body: (UnsafePointer<CChar>) throws(Errno) -> T) throws(Errno) -> T {
        // SAFETY: the path is valid while body runs; the caller holds the descriptor it names.
        try unsafe Self.withDecimal(fd) { (name) throws(Errno) -> T in try unsafe body(name) }
    }

    /// Runs `body` with the decimal digits of `value` as a C string.
    static func withDecimal<T: ~Copyable>(_ value: CInt, _ body: (UnsafePointer<CChar>) throws(Errno) -> T) throws(Errno) -> T {
        // SAFETY: 16 bytes hold any CInt's digits and the NUL; the C string is valid only while body runs.
        try unsafe withUnsafeTemporaryAllocation(of: CChar.self, capacity: 16) { (buffer) throws(Errno) -> T in
            unsafe writeDecimal(value, into: buffer.baseAddress!)
            return try unsafe body(buffer.baseAddress!)
        }
    }

    // MARK: FileSystem

    public func initialize(_ request: InitRequest) throws(Errno) -> FUSEInitFlags {
        var flags: FUSEInitFlags = []
        // O_TRUNC is done by OPEN when the guest sends one; otherwise the kernel must send a SETATTR for it.
        if opensFiles { flags.insert(.atomicOpenTruncate) }
        if options.locks { flags.insert(.posixLocks) }
        if options.flockLocks { flags.insert(.flockLocks) }
        if options.announceSubmounts { flags.insert(.submounts) }
        if killprivV2 { flags.insert(.handleKillprivV2) }
        if options.writeback { flags.insert(.writebackCache) }
        // The caller's supplementary group that owns a new file's parent: only useful when requests run as
        // their callers.
        if switchesCredentials { flags.insert(.createSupplementaryGroup) }
        if options.securityLabel {
            guard request.flags.contains(.securityContext) else {
                logger.error("--security-label needs FUSE_SECURITY_CTX, which this guest kernel does not offer")
                throw .protocolError
            }
            flags.insert(.securityContext)
        }
        if options.posixACL {
            let needed: FUSEInitFlags = [.posixACL, .dontMask, .setxattrExtended]
            guard request.flags.isSuperset(of: needed) else {
                logger.error("--posix-acl needs POSIX_ACL, DONT_MASK and SETXATTR_EXT, which this guest kernel does not offer")
                throw .protocolError
            }
            flags.formUnion(needed)
        }
        return flags
    }

    public func destroy() {
        lockTable.clear()
        handles.clear()
        inodes.clear()
        // What the session's nodes and handles used goes back to the kernel now, not at the next 16,384 FORGETs.
        ProcessSettings.returnFreedMemory()
    }

    public var census: FileSystemCensus? {
        FileSystemCensus(nodes: inodes.count + 1, handles: handles.count, heapInUseKiB: ProcessSettings.heapInUse / 1024,
                         anonymousResidentKiB: procSelf.anonymousResidentKiB)
    }

    public func lookup(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) -> Entry {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        let parentData = try node(parent)
        guard name.isValidComponent else { throw unsafe name.bytes.count > 255 ? .nameTooLong : .invalidArgument }
        do {
            return try unsafe lookupEntry(parentData, name.cString, isDotDot: name.isDotDot, isDot: name.isDot)
        } catch .noEntry where fixedTimeout != .zero {
            // A name that is not there may be trusted as long as one that is: the guest stops asking again.
            return .negative(timeout: tracksChanges ? timeout(of: parentData) : fixedTimeout)
        }
    }

    /// Looks `name` up in `parent` and adds one lookup to the node found; `created` when this request has just
    /// made the name.
    func lookupEntry(_ parent: InodeData, _ name: UnsafePointer<CChar>, isDotDot: Bool, isDot: Bool, created: Bool = false) throws(Errno) -> Entry {
        // SAFETY: the name is a view of the request, valid for the call; the kernel reads it up to its NUL.
        guard parent.fileType == .directory else { throw .notDirectory }
        // ".." of the shared directory is the shared directory: the guest cannot climb out of it.
        if isDot || (isDotDot && parent.nodeID == fuseRootID) {
            let found = isDot ? parent : inodes.root
            let fd = try withPath(found) { (fd) throws(Errno) -> OwnedFD in try fd.duplicate() }
            let stat = try unsafe fd.borrowed.statx("")
            return entry(try node(for: fd, stat), stat)
        }
        return try withPath(parent) { (dir) throws(Errno) -> Entry in
            // A node the guest holds already is found by its identity: one statx, no descriptor opened.
            let seen = try unsafe dir.statx(name)
            if let known = inodes.lookupExisting(key: InodeKey(seen)) {
                return entry(known, seen, parent: parent, created: created)
            }
            let fd = try unsafe dir.open(name, flags: [.path, .noFollow])
            let stat = try unsafe fd.borrowed.statx("")
            return entry(try node(for: fd, stat), stat, parent: parent, created: created)
        }
    }

    public func forget(_ context: RequestContext, node: UInt64, count: UInt64) {
        let since = tracksChanges ? WallClock.coarseNanoseconds() &- recentWindow : nil
        if inodes.forget(node, count: count, rememberingOwnChangesSince: since) {
            // Every guest process has closed the file by now: its lock owners' descriptions go with it.
            lockTable.releaseNode(node)
        }
    }

    /// Runs `read` on the open handle's descriptor when the guest names one it holds (GETATTR_FH), else on the
    /// node's: GETATTR and STATX. Returns what it read and its timeout.
    @inline(__always)
    func readAttributes<T>(
        node: UInt64, handle: UInt64?, _ read: (FileDescriptor) throws(Errno) -> T, stat: (T) -> FileStat
    ) throws(Errno) -> (T, Timeout) {
        if let handle, let open = handles.get(handle) {
            let attributes = try open.withDescriptor(read)
            guard tracksChanges else { return (attributes, fixedTimeout) }
            return (attributes, attributeTimeout(try self.node(node), stat(attributes)))
        }
        let data = try self.node(node)
        let attributes = try withPath(data, read)
        return (attributes, tracksChanges ? attributeTimeout(data, stat(attributes)) : fixedTimeout)
    }

    public func getattr(_ context: RequestContext, node: UInt64, handle: UInt64?) throws(Errno) -> AttributeReply {
        let (stat, timeout) = try readAttributes(node: node, handle: handle, { (fd) throws(Errno) in try fd.stat() }, stat: { $0 })
        return AttributeReply(attributes: guestView(stat), timeout: timeout)
    }

    public func statx(_ context: RequestContext, node: UInt64, handle: UInt64?, syncFlags: UInt32) throws(Errno) -> StatxReply {
        let sync = CInt(bitPattern: syncFlags)
        var (stat, timeout) = try readAttributes(node: node, handle: handle, { (fd) throws(Errno) in
            try fd.extendedStat(syncFlags: sync)
        }, stat: { $0.stat })
        stat.stat = guestView(stat.stat)
        return StatxReply(attributes: stat, timeout: timeout)
    }

    public func readlink(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the kernel writes at most buffer.count bytes into the caller's buffer.
        let data = try self.node(node)
        guard data.fileType == .symbolicLink else { throw .invalidArgument }
        return try withPath(data) { (fd) throws(Errno) -> Int in try unsafe fd.readLink(into: buffer) }
    }

    /// The flags a guest open may pass to the host: no creation, no controlling terminal, no following of
    /// the magic link's target beyond the file itself.
    func hostOpenFlags(_ guestFlags: UInt32) -> CInt {
        var flags = CInt(bitPattern: guestFlags)
        flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | CVFS_O_NOFOLLOW | CVFS_O_PATH)
        // O_DIRECT: the guest's page cache, not the host's, is the one it means to bypass.
        if !options.allowDirectIO { flags &= ~CInt(0o40000) }
        // O_NOATIME needs ownership of the file; virtiofsd strips it by default.
        if !options.preserveNoatime { flags &= ~CInt(0o1000000) }
        if options.writeback {
            // With a writeback cache the guest reads to fill pages it writes, and appends itself.
            if flags & O_ACCMODE == O_WRONLY { flags = (flags & ~O_ACCMODE) | O_RDWR }
            flags &= ~O_APPEND
        }
        return flags | CVFS_O_CLOEXEC
    }

    /// Fails with EROFS when the share is read-only.
    @inline(__always)
    func checkWritable() throws(Errno) {
        if options.readOnly { throw .readOnlyFileSystem }
    }

    public func open(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply {
        let data = try self.node(node)
        // ENOSYS: the guest stops sending OPEN and RELEASE (see opensFiles).
        if !opensFiles && data.fileType == .regular { throw .noFunction }
        let accessMode = CInt(bitPattern: flags) & O_ACCMODE
        guard data.fileType != .directory || accessMode == O_RDONLY else { throw .isDirectory }
        if accessMode != O_RDONLY || CInt(bitPattern: flags) & O_TRUNC != 0 { try checkWritable() }
        let hostFlags = hostOpenFlags(flags)
        let fd = try reopen(data, flags: hostFlags)
        // A truncating open by a caller without CAP_FSETID drops the set-id bits, locally. O_TRUNC reaches OPEN only
        // with ATOMIC_O_TRUNC, and then the guest skips the SETATTR that would drop them (fuse_do_setattr returns
        // early for ATTR_OPEN): the daemon drops them. With HANDLE_KILLPRIV_V2 the guest says when
        // (FUSE_OPEN_KILL_SUIDGID); without, a non-root caller is taken to lack CAP_FSETID. (CREATE needs none: the
        // guest sends it only for a name it does not know, and a new file keeps its bits.)
        let unprivileged = killprivV2 ? context.killSetIDBitsOnTruncate : context.uid != 0
        if unprivileged && hostFlags & O_TRUNC != 0 && data.fileType == .regular {
            try clearSetIDBits(data, context)
        }
        if hostFlags & O_TRUNC != 0 && data.fileType == .regular { try dropRemappedCapability(fd.borrowed) }
        let writing = accessMode != O_RDONLY
        var openFlags = fileOpenFlags
        if tracksChanges && data.fileType == .regular {
            let stat = try fd.borrowed.stat()
            if hostFlags & O_TRUNC != 0 {
                noteOwnChange(data)
            } else {
                observe(data, stat, telling: false)
                try refuseStaleOpen(data, stat, context)
            }
            // Close-to-open, without re-reading what did not change: the guest keeps its page cache when the
            // file is as it was at the guest's last open or last write (size, mtime and ctime, to the ns).
            let now = FileVersion(stat)
            let unchanged = data.lastSeen.withLock { seen in
                defer { seen = now }
                return seen == now
            }
            if unchanged { openFlags.insert(.keepCache) }
        }
        let handle = handles.insert(fd, writer: writing && tracksChanges ? data : nil,
                                    appending: hostFlags & O_APPEND != 0)
        return OpenReply(handle: handle, flags: openFlags)
    }

    public func read(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, into destination: ReadDestination) throws(Errno) -> Int {
        // SAFETY: the guest's buffers are valid during the request; preadv writes at most destination.length bytes.
        guard destination.length > 0 else { return 0 }
        guard offset <= UInt64(Int64.max) else { throw .invalidArgument }
        return try withFile(node: node, handle: handle, writing: false) { (fd) throws(Errno) -> Int in
            try unsafe fd.read(into: destination.buffers, at: Int64(offset))
        }
    }

    public func flush(_ context: RequestContext, node: UInt64, handle: UInt64, lockOwner: UInt64) throws(Errno) {
        if isUnopened(handle) {
            // With POSIX locks off there is nothing to do at a close: ENOSYS, and the guest sends no more FLUSH.
            guard options.locks else { throw .noFunction }
        } else {
            _ = try self.handle(handle)
        }
        // close() in the guest: that owner's POSIX locks on the file go, as on a local file system.
        lockTable.releaseOwner(node: node, owner: lockOwner)
    }

    public func release(_ context: RequestContext, node: UInt64, handle: UInt64, releaseFlags: UInt32) throws(Errno) {
        if releaseFlags & UInt32(FUSE_RELEASE_FLOCK_UNLOCK) != 0, let open = handles.get(handle) {
            try? open.withDescriptor { (fd) throws(Errno) in try fd.flock(LOCK_UN) }
        }
        // Open-file-description locks taken through this handle end with it.
        if options.locks { lockTable.releaseHandle(node: node, handle: handle) }
        if let released = handles.remove(handle), let node = released.writer,
           let stat = try? released.withDescriptor({ (fd) throws(Errno) in try fd.stat() }) {
            // The guest's own writes are in its cache already: what it wrote is the version it knows.
            node.lastSeen.withLock { $0 = FileVersion(stat) }
        }
    }

    public func statfs(_ context: RequestContext, node: UInt64) throws(Errno) -> FileSystemStats {
        try withPath(try self.node(node)) { (fd) throws(Errno) -> FileSystemStats in try fd.fileSystemStats() }
    }

    public func opendir(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply {
        let data = try self.node(node)
        guard data.fileType == .directory else { throw .notDirectory }
        guard options.cache.opensDirectories else { throw .noFunction }
        let fd = try openDirectory(data)
        return OpenReply(handle: handles.insert(fd), flags: options.cache.directoryOpenFlags)
    }

    public func releasedir(_ context: RequestContext, node: UInt64, handle: UInt64) throws(Errno) {
        handles.remove(handle)
    }

    public func readdir<Sink: DirectoryEntrySink>(
        _ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, plus: Bool, into sink: inout Sink
    ) throws(Errno) {
        let parent = try self.node(node)
        if handle == 0 && !options.cache.opensDirectories {
            // The guest does not open directories (see CachePolicy.opensDirectories): a descriptor per READDIR.
            let fd = try openDirectory(parent)
            return try readDirectory(parent: parent, fd: fd.borrowed, offset: offset, plus: plus, into: &sink)
        }
        let open = try self.handle(handle)
        try open.directoryLock.withLock { _ throws(Errno) in
            try open.withDescriptor { (fd) throws(Errno) in try readDirectory(parent: parent, fd: fd, offset: offset, plus: plus, into: &sink) }
        }
    }

    /// Lists the directory from the cookie `offset` (a `d_off` we returned earlier, or 0).
    // SAFETY: each record is read only after checking it lies inside the n bytes getdents64 returned; names stop at
    // their NUL or the record's end.
    func readDirectory<Sink: DirectoryEntrySink>(
        parent: InodeData, fd: FileDescriptor, offset: UInt64, plus: Bool, into sink: inout Sink
    ) throws(Errno) {
        guard offset <= UInt64(Int64.max) else { throw .invalidArgument }
        // The directory's own changes decide how long the names listed may be trusted.
        if plus && tracksChanges { observe(parent, try fd.stat(), telling: false) }
        try fd.seek(to: Int64(offset))
        var added = 0
        try unsafe withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 8) { (buffer) throws(Errno) in
            while true {
                let n = try unsafe fd.directoryEntries(into: buffer)
                if n == 0 { return }
                var position = 0
                // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                while position + 19 < n {
                    let record = unsafe UnsafeRawPointer(buffer.baseAddress!) + position
                    let inode = unsafe record.loadUnaligned(as: UInt64.self)
                    let next = unsafe record.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
                    let recordLength = unsafe Int(record.loadUnaligned(fromByteOffset: 16, as: UInt16.self))
                    let type = unsafe record.load(fromByteOffset: 18, as: UInt8.self)
                    guard recordLength > 19, position + recordLength <= n else { throw .ioError }
                    let namePointer = unsafe (record + 19).assumingMemoryBound(to: CChar.self)
                    let nameLength = unsafe strnlen(namePointer, recordLength - 19)
                    let name = unsafe UnsafeRawBufferPointer(start: record + 19, count: nameLength)
                    let isDot = unsafe nameLength == 1 && name[0] == UInt8(ascii: ".")
                    let isDotDot = unsafe nameLength == 2 && name[0] == UInt8(ascii: ".") && name[1] == UInt8(ascii: ".")
                    var entry: Entry? = nil
                    if plus && !isDot && !isDotDot {
                        // Not even one entry fits the guest's buffer: an error, not an empty listing, which
                        // would read as the end of the directory.
                        guard sink.fits(nameLength: nameLength) else {
                            if added == 0 { throw .invalidArgument }
                            return
                        }
                        do throws(Errno) {
                            entry = unsafe try lookupEntry(parent, namePointer, isDotDot: false, isDot: false)
                        } catch {
                            // Gone since getdents: not listed, as if read a moment later.
                            if error == .noEntry {
                                position += recordLength
                                continue
                            }
                            // Any other failure (out of descriptors, say): listed without attributes (node 0,
                            // which the guest takes as a plain entry), never left out, and never an error for the
                            // whole listing, which a guest's readdir may take as its end (busybox does). The
                            // guest's own LOOKUP of the name then gets the error.
                            entry = nil
                        }
                    }
                    guard unsafe sink.add(name: name, inode: inode, type: UInt32(type), offset: next, entry: entry) else {
                        if let entry { forget(RequestContext(), node: entry.nodeID, count: 1) }
                        if added == 0 { throw .invalidArgument }
                        return
                    }
                    added += 1
                    position += recordLength
                }
            }
        }
    }

    public func access(_ context: RequestContext, node: UInt64, mask: UInt32) throws(Errno) {
        let stat = guestView(try withPath(try self.node(node)) { (fd) throws(Errno) -> FileStat in try fd.stat() })
        let wanted = mask & 7
        guard wanted != 0 else { return }  // F_OK: it exists
        let mode = stat.mode
        if context.uid == 0 {
            // root may read and write anything; execute needs some execute bit, or a directory
            if wanted & 1 != 0 && stat.fileType != .directory && mode & 0o111 == 0 { throw .permissionDenied }
            return
        }
        let granted: UInt32
        if context.uid == stat.uid {
            granted = (mode >> 6) & 7
        } else if context.gid == stat.gid {
            granted = (mode >> 3) & 7
        } else {
            granted = mode & 7
        }
        guard wanted & ~granted == 0 else { throw .permissionDenied }
    }

    public func getxattr(_ context: RequestContext, node: UInt64, name: FUSEName, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        guard options.xattr else { throw .noFunction }
        let data = try self.node(node)
        return try unsafe withHostName(name) { (hostName) throws(Errno) -> Int in
            try unsafe withProcPath(of: data) { (path) throws(Errno) -> Int in
                try unsafe ExtendedAttributes.get(path: path, name: hostName, into: buffer)
            }
        }
    }

    /// Runs `body` with the host's name for the guest's xattr `name` (`--xattrmap`; else the name itself).
    func withHostName<T>(_ name: FUSEName, _ body: (UnsafePointer<CChar>) throws(Errno) -> T) throws(Errno) -> T {
        // SAFETY: the mapped name is a NUL-terminated copy, valid while body runs.
        guard let map = options.xattrMap else { return try unsafe body(name.cString) }
        switch unsafe map.toHost(name.bytes) {
        case .refused(let error): throw error
        case .name(let mapped):
            return try unsafe (mapped + [0]).withUnsafeBufferPointer { (bytes) throws(Errno) -> T in
                try unsafe body(UnsafeRawPointer(bytes.baseAddress!).assumingMemoryBound(to: CChar.self))
            }
        }
    }

    public func listxattr(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the /proc path names a descriptor the node holds for the call; the kernel reads the C strings during
        // it.
        guard options.xattr else { throw .noFunction }
        let data = try self.node(node)
        guard let map = options.xattrMap else {
            return try unsafe withProcPath(of: data) { (path) throws(Errno) -> Int in
                try unsafe ExtendedAttributes.list(path: path, into: buffer)
            }
        }
        // The host's whole list (at most XATTR_LIST_MAX), mapped; then its size, or the names if they fit.
        let mapped = try unsafe withProcPath(of: data) { (path) throws(Errno) -> [UInt8] in
            try unsafe withUnsafeTemporaryAllocation(byteCount: 65536, alignment: 1) { (scratch) throws(Errno) -> [UInt8] in
                let n = try unsafe ExtendedAttributes.list(path: path, into: scratch)
                return unsafe map.listToGuest(UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
            }
        }
        if buffer.count == 0 { return mapped.count }
        guard mapped.count <= buffer.count else { throw .range }
        unsafe mapped.withUnsafeBytes { unsafe buffer.copyMemory(from: $0) }
        return mapped.count
    }
}

/// Writes the decimal digits of a non-negative `value` and a NUL at `p` (at most 11 bytes).
func writeDecimal(_ value: CInt, into p: UnsafeMutablePointer<CChar>) {
    // SAFETY: callers give at least 12 bytes; a CInt has at most 10 digits, plus the NUL.
    var digits: (CChar, CChar, CChar, CChar, CChar, CChar, CChar, CChar, CChar, CChar, CChar, CChar) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var v = UInt32(max(value, 0))
    var count = 0
    unsafe withUnsafeMutableBytes(of: &digits) { raw in
        repeat {
            unsafe raw[count] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
            count += 1
        } while v > 0
        for i in 0..<count { unsafe p[i] = unsafe CChar(bitPattern: raw[count - 1 - i]) }
    }
    unsafe p[count] = 0
}
