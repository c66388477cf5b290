// SPDX-License-Identifier: Apache-2.0

/// A reply being assembled in a per-queue scratch buffer, before it is copied into the guest's buffers.
/// It never grows past `limit`: appends that would are refused.
struct ReplyBuilder {
    let storage: UnsafeMutableRawBufferPointer
    private(set) var count = 0
    /// The most bytes this reply may hold (the guest's buffer, or the request's size argument).
    var limit: Int

    init(storage: UnsafeMutableRawBufferPointer, limit: Int) {
        self.storage = storage
        self.limit = min(limit, storage.count)
    }

    var remaining: Int { limit - count }

    /// Appends a C struct; false (and nothing written) when it does not fit.
    @discardableResult
    mutating func append<T>(_ value: T) -> Bool {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { return false }
        storage.baseAddress!.advanced(by: count).storeBytes(of: value, as: T.self)
        count += size
        return true
    }

    /// Appends raw bytes; false when they do not fit.
    @discardableResult
    mutating func append(bytes: UnsafeRawBufferPointer) -> Bool {
        guard remaining >= bytes.count else { return false }
        if let base = bytes.baseAddress, bytes.count > 0 {
            storage.baseAddress!.advanced(by: count).copyMemory(from: base, byteCount: bytes.count)
        }
        count += bytes.count
        return true
    }

    /// Appends `n` zero bytes.
    mutating func appendZeros(_ n: Int) {
        storage.baseAddress!.advanced(by: count).initializeMemory(as: UInt8.self, repeating: 0, count: n)
        count += n
    }

    /// Room for `n` bytes that the caller fills in through the returned buffer; `commit` counts them.
    func unused(upTo n: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: storage[count..<count + min(n, remaining)])
    }

    /// Counts `n` bytes written through `unused`; false (and nothing counted) when `n` is more than there was
    /// room for, which only a faulty file system can say.
    mutating func commit(_ n: Int) -> Bool {
        guard n >= 0, n <= remaining else { return false }
        count += n
        return true
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[0..<count]) }
}
