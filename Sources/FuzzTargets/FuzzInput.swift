// SPDX-License-Identifier: Apache-2.0

/// Reads a fuzzer's input as a stream of small decisions; past the end every read gives zeros.
struct FuzzInput {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }
    var remaining: Int { max(0, bytes.count - offset) }

    mutating func u8() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }

    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }

    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

    /// Up to `count` bytes (fewer at the end of the input).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = min(max(count, 0), remaining)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }
}

/// Sizes a fuzzer picks buffers from: the edges of the structures the code reads and writes.
let interestingSizes = [0, 1, 8, 15, 16, 17, 24, 40, 48, 64, 80, 104, 120, 128, 144, 160, 256, 4095, 4096, 4097, 8192, 65536 + 24]
