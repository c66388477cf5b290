// SPDX-License-Identifier: Apache-2.0

import CVirtioFS

/// FUSE request opcodes (`enum fuse_opcode` in <linux/fuse.h>).
public enum FUSEOpcode: UInt32, Sendable, CaseIterable {
    case lookup = 1
    case forget = 2
    case getattr = 3
    case setattr = 4
    case readlink = 5
    case symlink = 6
    case mknod = 8
    case mkdir = 9
    case unlink = 10
    case rmdir = 11
    case rename = 12
    case link = 13
    case open = 14
    case read = 15
    case write = 16
    case statfs = 17
    case release = 18
    case fsync = 20
    case setxattr = 21
    case getxattr = 22
    case listxattr = 23
    case removexattr = 24
    case flush = 25
    case `init` = 26
    case opendir = 27
    case readdir = 28
    case releasedir = 29
    case fsyncdir = 30
    case getlk = 31
    case setlk = 32
    case setlkw = 33
    case access = 34
    case create = 35
    case interrupt = 36
    case bmap = 37
    case destroy = 38
    case ioctl = 39
    case poll = 40
    case notifyReply = 41
    case batchForget = 42
    case fallocate = 43
    case readdirplus = 44
    case rename2 = 45
    case lseek = 46
    case copyFileRange = 47
    case setupMapping = 48
    case removeMapping = 49
    case syncfs = 50
    case tmpfile = 51
    case statx = 52

    /// Requests that make a new file, which may carry a security context.
    public var createsNode: Bool {
        switch self {
        case .create, .mknod, .mkdir, .symlink, .tmpfile: true
        default: false
        }
    }

    /// Requests the guest does not expect an answer to.
    public var hasReply: Bool {
        switch self {
        case .forget, .batchForget, .interrupt: false
        default: true
        }
    }

    /// The bytes of a successful reply's payload when it has a fixed size (0 for the rest): a guest buffer
    /// with less room is refused before the request changes anything, so that no success is ever cut short.
    public var fixedReplySize: Int {
        switch self {
        case .lookup, .mknod, .mkdir, .symlink, .link: MemoryLayout<fuse_entry_out>.size
        case .create, .tmpfile: MemoryLayout<fuse_entry_out>.size + MemoryLayout<fuse_open_out>.size
        case .getattr, .setattr: MemoryLayout<fuse_attr_out>.size
        case .statx: MemoryLayout<fuse_statx_out>.size
        case .open, .opendir: MemoryLayout<fuse_open_out>.size
        case .statfs: MemoryLayout<fuse_statfs_out>.size
        case .write, .copyFileRange: MemoryLayout<fuse_write_out>.size
        case .lseek: MemoryLayout<fuse_lseek_out>.size
        case .getlk: MemoryLayout<fuse_lk_out>.size
        case .`init`: MemoryLayout<fuse_init_out>.size
        default: 0
        }
    }
}

/// `FUSE_INIT` flag bits (`flags` in the low 32 bits, `flags2` in the high 32), from <linux/fuse.h>.
public struct FUSEInitFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let asyncRead = FUSEInitFlags(rawValue: 1 << 0)
    public static let posixLocks = FUSEInitFlags(rawValue: 1 << 1)
    public static let fileOps = FUSEInitFlags(rawValue: 1 << 2)
    public static let atomicOpenTruncate = FUSEInitFlags(rawValue: 1 << 3)
    public static let exportSupport = FUSEInitFlags(rawValue: 1 << 4)
    public static let bigWrites = FUSEInitFlags(rawValue: 1 << 5)
    public static let dontMask = FUSEInitFlags(rawValue: 1 << 6)
    public static let spliceWrite = FUSEInitFlags(rawValue: 1 << 7)
    public static let spliceMove = FUSEInitFlags(rawValue: 1 << 8)
    public static let spliceRead = FUSEInitFlags(rawValue: 1 << 9)
    public static let flockLocks = FUSEInitFlags(rawValue: 1 << 10)
    public static let hasIoctlDirectory = FUSEInitFlags(rawValue: 1 << 11)
    public static let autoInvalidateData = FUSEInitFlags(rawValue: 1 << 12)
    public static let doReaddirplus = FUSEInitFlags(rawValue: 1 << 13)
    public static let readdirplusAuto = FUSEInitFlags(rawValue: 1 << 14)
    public static let asyncDirectIO = FUSEInitFlags(rawValue: 1 << 15)
    public static let writebackCache = FUSEInitFlags(rawValue: 1 << 16)
    public static let noOpenSupport = FUSEInitFlags(rawValue: 1 << 17)
    public static let parallelDirectoryOps = FUSEInitFlags(rawValue: 1 << 18)
    public static let handleKillpriv = FUSEInitFlags(rawValue: 1 << 19)
    public static let posixACL = FUSEInitFlags(rawValue: 1 << 20)
    public static let abortError = FUSEInitFlags(rawValue: 1 << 21)
    public static let maxPages = FUSEInitFlags(rawValue: 1 << 22)
    public static let cacheSymlinks = FUSEInitFlags(rawValue: 1 << 23)
    public static let noOpendirSupport = FUSEInitFlags(rawValue: 1 << 24)
    public static let explicitInvalidateData = FUSEInitFlags(rawValue: 1 << 25)
    public static let mapAlignment = FUSEInitFlags(rawValue: 1 << 26)
    public static let submounts = FUSEInitFlags(rawValue: 1 << 27)
    public static let handleKillprivV2 = FUSEInitFlags(rawValue: 1 << 28)
    public static let setxattrExtended = FUSEInitFlags(rawValue: 1 << 29)
    public static let initExtended = FUSEInitFlags(rawValue: 1 << 30)
    public static let initReserved = FUSEInitFlags(rawValue: 1 << 31)
    public static let securityContext = FUSEInitFlags(rawValue: 1 << 32)
    public static let hasInodeDAX = FUSEInitFlags(rawValue: 1 << 33)
    public static let createSupplementaryGroup = FUSEInitFlags(rawValue: 1 << 34)
    public static let hasExpireOnly = FUSEInitFlags(rawValue: 1 << 35)
    public static let directIOAllowMmap = FUSEInitFlags(rawValue: 1 << 36)
}

/// `FOPEN_*` flags of an open reply.
public struct FUSEOpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let directIO = FUSEOpenFlags(rawValue: 1 << 0)
    public static let keepCache = FUSEOpenFlags(rawValue: 1 << 1)
    public static let nonSeekable = FUSEOpenFlags(rawValue: 1 << 2)
    public static let cacheDirectory = FUSEOpenFlags(rawValue: 1 << 3)
    public static let stream = FUSEOpenFlags(rawValue: 1 << 4)
    public static let noFlush = FUSEOpenFlags(rawValue: 1 << 5)
    public static let parallelDirectWrites = FUSEOpenFlags(rawValue: 1 << 6)
}
