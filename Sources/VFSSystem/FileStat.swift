// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A timestamp as the kernel keeps it.
public struct FileTime: Hashable, Sendable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// The attributes of a file, copied out of `struct stat` or `struct statx`.
public struct FileStat: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var mode: UInt32
    public var linkCount: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var specialDevice: UInt64
    public var size: Int64
    public var blockSize: Int64
    public var blocks: Int64
    public var accessTime: FileTime
    public var modificationTime: FileTime
    public var changeTime: FileTime
    /// The mount id (STATX_MNT_ID), or 0 when it is not known.
    public var mountID: UInt64
    /// The birth time, from statx with STATX_BTIME; zero when the file system keeps none (or from fstat).
    /// With the inode number it tells a file apart from a later one that reuses the number.
    public var birthTime = FileTime(seconds: 0, nanoseconds: 0)

    public init(
        device: UInt64 = 0, inode: UInt64 = 0, mode: UInt32 = 0, linkCount: UInt64 = 1, uid: UInt32 = 0,
        gid: UInt32 = 0, specialDevice: UInt64 = 0, size: Int64 = 0, blockSize: Int64 = 4096, blocks: Int64 = 0,
        accessTime: FileTime = FileTime(seconds: 0, nanoseconds: 0),
        modificationTime: FileTime = FileTime(seconds: 0, nanoseconds: 0),
        changeTime: FileTime = FileTime(seconds: 0, nanoseconds: 0), mountID: UInt64 = 0
    ) {
        self.device = device
        self.inode = inode
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.specialDevice = specialDevice
        self.size = size
        self.blockSize = blockSize
        self.blocks = blocks
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
        self.mountID = mountID
    }

    init(_ s: stat) {
        self.init(
            device: UInt64(s.st_dev), inode: UInt64(s.st_ino), mode: UInt32(s.st_mode),
            linkCount: UInt64(s.st_nlink), uid: s.st_uid, gid: s.st_gid, specialDevice: UInt64(s.st_rdev),
            size: Int64(s.st_size), blockSize: Int64(s.st_blksize), blocks: Int64(s.st_blocks),
            accessTime: FileTime(seconds: Int64(s.st_atim.tv_sec), nanoseconds: UInt32(s.st_atim.tv_nsec)),
            modificationTime: FileTime(seconds: Int64(s.st_mtim.tv_sec), nanoseconds: UInt32(s.st_mtim.tv_nsec)),
            changeTime: FileTime(seconds: Int64(s.st_ctim.tv_sec), nanoseconds: UInt32(s.st_ctim.tv_nsec)))
    }

    init(_ s: CVirtioFS.statx) {
        self.init(
            device: UInt64(cvfs_makedev(s.stx_dev_major, s.stx_dev_minor)), inode: s.stx_ino,
            mode: UInt32(s.stx_mode), linkCount: UInt64(s.stx_nlink), uid: s.stx_uid, gid: s.stx_gid,
            specialDevice: UInt64(cvfs_makedev(s.stx_rdev_major, s.stx_rdev_minor)), size: Int64(s.stx_size),
            blockSize: Int64(s.stx_blksize), blocks: Int64(s.stx_blocks),
            accessTime: FileTime(seconds: s.stx_atime.tv_sec, nanoseconds: s.stx_atime.tv_nsec),
            modificationTime: FileTime(seconds: s.stx_mtime.tv_sec, nanoseconds: s.stx_mtime.tv_nsec),
            changeTime: FileTime(seconds: s.stx_ctime.tv_sec, nanoseconds: s.stx_ctime.tv_nsec),
            mountID: (s.stx_mask & CVFS_STATX_MNT_ID) != 0 ? s.stx_mnt_id : 0)
        if s.stx_mask & CVFS_STATX_BTIME != 0 {
            birthTime = FileTime(seconds: s.stx_btime.tv_sec, nanoseconds: s.stx_btime.tv_nsec)
        }
    }

    /// The file-type bits of `mode`.
    public var fileType: FileType { FileType(mode: mode) }
}

/// What statx(2) tells beyond `FileStat`: which fields are valid (STATX_BTIME says whether `stat.birthTime` is
/// the file's), and the `STATX_ATTR_*` flags.
public struct ExtendedFileStat: Hashable, Sendable {
    public var stat: FileStat
    /// The `STATX_*` bits of the fields the file system filled in.
    public var mask: UInt32
    public var attributes: UInt64
    public var attributesMask: UInt64

    public init(stat: FileStat, mask: UInt32, attributes: UInt64 = 0, attributesMask: UInt64 = 0) {
        self.stat = stat
        self.mask = mask
        self.attributes = attributes
        self.attributesMask = attributesMask
    }

    init(_ s: CVirtioFS.statx) {
        self.init(stat: FileStat(s), mask: s.stx_mask, attributes: s.stx_attributes, attributesMask: s.stx_attributes_mask)
    }

    /// STATX_BTIME.
    public static var birthTimeBit: UInt32 { CVFS_STATX_BTIME }
    /// STATX_BASIC_STATS.
    public static var basicStatsBits: UInt32 { CVFS_STATX_BASIC_STATS }
}

/// The type of a file, from the `S_IFMT` bits of its mode.
public enum FileType: Sendable, Hashable {
    case regular, directory, symbolicLink, characterDevice, blockDevice, fifo, socket, unknown

    /// Whether a file server may open a file of this type for its client: a regular file or a directory.
    /// Opening a device node reaches a device, a FIFO blocks until a peer comes, a symlink is followed.
    public var canBeOpened: Bool { self == .regular || self == .directory }

    public init(mode: UInt32) {
        // The S_IF* values are fixed by the Linux ABI (include/uapi/linux/stat.h).
        switch mode & 0o170000 {
        case 0o100000: self = .regular
        case 0o040000: self = .directory
        case 0o120000: self = .symbolicLink
        case 0o020000: self = .characterDevice
        case 0o060000: self = .blockDevice
        case 0o010000: self = .fifo
        case 0o140000: self = .socket
        default: self = .unknown
        }
    }
}

/// File-system statistics, copied out of `struct statvfs`.
public struct FileSystemStats: Hashable, Sendable {
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var blockSize: UInt32
    public var nameMax: UInt32
    public var fragmentSize: UInt32

    public init(
        blocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64, files: UInt64, freeFiles: UInt64,
        blockSize: UInt32, nameMax: UInt32, fragmentSize: UInt32
    ) {
        self.blocks = blocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.files = files
        self.freeFiles = freeFiles
        self.blockSize = blockSize
        self.nameMax = nameMax
        self.fragmentSize = fragmentSize
    }
}
