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
        // SAFETY: the shim writes into this local handle (room for MAX_HANDLE_SZ bytes) and mount id during the call.
        var storage = cvfs_file_handle()
        var mountID: Int32 = 0
        try nothingOrErrno { unsafe cvfs_name_to_handle_at(rawValue, "", &storage, &mountID, CVFS_AT_EMPTY_PATH) }
        return KernelFileHandle(storage: storage, mountID: mountID)
    }

    /// Opens the file `handle` names; this descriptor is any file on the same mount.
    /// The corresponding C function is `open_by_handle_at`.
    public func open(handle: KernelFileHandle, flags: OpenFlags) throws(Errno) -> OwnedFD {
        // SAFETY: the kernel reads the handle from this local copy during the call.
        var storage = handle.storage
        return OwnedFD(taking: try valueOrErrno { unsafe cvfs_open_by_handle_at(rawValue, &storage, flags.union(.closeOnExec).rawValue) })
    }
}
