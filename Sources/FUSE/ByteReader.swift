// SPDX-License-Identifier: Apache-2.0

/// Reads fixed-size values and names from a request, returning nil instead of trapping on short input.
// SAFETY: Reads are bounds-checked against `bytes`, which the session's scratch storage holds for the request.
@safe
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { unsafe self.bytes = unsafe bytes }

    var remainingCount: Int { unsafe bytes.count - offset }

    /// The unread bytes.
    // SAFETY: offset never passes bytes.count (every read checks first), so the slice is inside `bytes`.
    var remaining: UnsafeRawBufferPointer { unsafe UnsafeRawBufferPointer(rebasing: bytes[offset...]) }

    /// Reads a C struct (copied out once: the guest may change its memory under us).
    mutating func read<T>(_ type: T.Type) -> T? {
        // SAFETY: reads only after checking `size` bytes remain; loadUnaligned copies them out of possibly misaligned
        // bytes.
        let size = MemoryLayout<T>.size
        guard remainingCount >= size else { return nil }
        let value = unsafe bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += size
        return value
    }

    /// Skips `count` bytes; nil when there are fewer.
    mutating func read(bytes count: Int) -> UnsafeRawBufferPointer? {
        // SAFETY: checks the count against what remains before slicing.
        guard count >= 0, remainingCount >= count else { return nil }
        defer { offset += count }
        return unsafe UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }

    /// Reads a NUL-terminated name; nil when there is no NUL before the end.
    mutating func readName() -> FUSEName? {
        // SAFETY: the name ends before the NUL found inside the remaining bytes, so it and its NUL are inside `bytes`.
        let rest = unsafe remaining
        guard let end = unsafe rest.firstIndex(of: 0) else { return nil }
        offset += end + 1
        return unsafe FUSEName(bytes: UnsafeRawBufferPointer(rebasing: rest[..<end]))
    }
}
