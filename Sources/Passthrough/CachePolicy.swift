// SPDX-License-Identifier: Apache-2.0

import FUSE

/// How much the guest may cache: virtiofsd's modes, with an `auto` whose timeouts follow who changes what.
///
/// | mode | entry and attribute timeout | files | directories |
/// |---|---|---|---|
/// | never | 0 s, no READDIRPLUS | DIRECT_IO | - |
/// | metadata | 86400 s | DIRECT_IO | KEEP_CACHE, CACHE_DIR |
/// | auto | 1 s for nodes others changed in the last minute, else 10 s (`AutoTimeouts`) | close-to-open | KEEP_CACHE, CACHE_DIR |
/// | always | 86400 s | KEEP_CACHE | KEEP_CACHE, CACHE_DIR |
///
/// With KEEP_CACHE and CACHE_DIR on directories, the guest does not open them at all (`opensDirectories`). Its
/// copy of a listing then lives as long as the directory's mtime: the guest's kernel (with AUTO_INVAL_DATA, which
/// the server always offers) checks it against the directory's attributes each time it reads the listing from the
/// start, so in `auto` a listing is as fresh as the directory's attributes.
public enum CachePolicy: String, Sendable, CaseIterable {
    case never
    case metadata
    case auto
    case always

    /// Parses a mode, accepting the C virtiofsd's `none` for `never`.
    public init?(parsing text: String) {
        if text == "none" {
            self = .never
        } else {
            self.init(rawValue: text)
        }
    }

    /// How long the guest may trust a name lookup or the attributes it got; in `auto`, the longest it may
    /// (`AutoTimeouts` decides node by node).
    public var timeout: Timeout {
        switch self {
        case .never: .zero
        case .metadata, .always: Timeout(seconds: 86400)
        case .auto: AutoTimeouts().long
        }
    }

    /// Open flags for a regular file.
    public var fileOpenFlags: FUSEOpenFlags {
        switch self {
        case .never, .metadata: .directIO
        case .auto: []
        case .always: .keepCache
        }
    }

    /// Open flags for a directory.
    public var directoryOpenFlags: FUSEOpenFlags {
        switch self {
        case .never: []
        case .metadata, .auto, .always: [.keepCache, .cacheDirectory]
        }
    }

    /// Whether the guest should send OPENDIR and RELEASEDIR. When a directory's open flags would be KEEP_CACHE
    /// and CACHE_DIR anyway, OPENDIR answers ENOSYS: the kernel then assumes exactly those flags for every
    /// directory, stops sending OPENDIR and RELEASEDIR (two round trips per directory a walk visits), and
    /// sends READDIR with handle 0, which we serve from a descriptor opened for that request.
    public var opensDirectories: Bool { directoryOpenFlags != [.keepCache, .cacheDirectory] }

    /// Whether READDIRPLUS may be offered (never with `never`, as virtiofsd).
    public var allowsReaddirplus: Bool { self != .never }
}
