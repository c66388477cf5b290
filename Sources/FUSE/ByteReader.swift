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

    /// Skips `count` bytes; nil when there are fewer.
    mutating func read(bytes count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, remainingCount >= count else { return nil }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }

    /// Reads a NUL-terminated name; nil when there is no NUL before the end.
    mutating func readName() -> FUSEName? {
        let rest = remaining
        guard let end = rest.firstIndex(of: 0) else { return nil }
        offset += end + 1
        return FUSEName(bytes: UnsafeRawBufferPointer(rebasing: rest[..<end]))
    }
}
