// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A kernel file handle (`name_to_handle_at`): names a file on its mount without holding a descriptor.
public struct KernelFileHandle: @unchecked Sendable {
    var storage: cvfs_file_handle
    /// The id of the mount the file is on.
    public let mountID: Int32
}

extension FileDescriptor {
    /// The file handle of the file this descriptor names. The corresponding C function is
    /// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`.
    /// - Throws: EOPNOTSUPP where the file system has no handles.
    public func fileHandle() throws(Errno) -> KernelFileHandle {
        var storage = cvfs_file_handle()
        var mountID: Int32 = 0
        try nothingOrErrno { cvfs_name_to_handle_at(rawValue, "", &storage, &mountID, CVFS_AT_EMPTY_PATH) }
        return KernelFileHandle(storage: storage, mountID: mountID)
    }

    /// Opens the file `handle` names; this descriptor is any file on the same mount.
    /// The corresponding C function is `open_by_handle_at`.
    public func open(handle: KernelFileHandle, flags: OpenFlags) throws(Errno) -> OwnedFD {
        var storage = handle.storage
        return OwnedFD(taking: try valueOrErrno { cvfs_open_by_handle_at(rawValue, &storage, flags.union(.closeOnExec).rawValue) })
    }
}
