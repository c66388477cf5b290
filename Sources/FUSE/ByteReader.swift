// SPDX-License-Identifier: Apache-2.0

/// Reads fixed-size values and names from a request, returning nil instead of trapping on short input.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remainingCount: Int { bytes.count - offset }

    /// The unread bytes.
    var remaining: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[offset...]) }

    /// Reads a C struct (copied out once: the guest may change its memory under us).
    mutating func read<T>(_ type: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard remainingCount >= size else { return nil }
        let value = bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += size
        return value
    }

    /// Reads a NUL-terminated name; nil when there is no NUL before the end.
    mutating func readName() -> FUSEName? {
        let rest = remaining
        guard let end = rest.firstIndex(of: 0) else { return nil }
        offset += end + 1
        return FUSEName(bytes: UnsafeRawBufferPointer(rebasing: rest[..<end]))
    }
}
