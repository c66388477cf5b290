// SPDX-License-Identifier: Apache-2.0

/// A reply being assembled in a per-queue scratch buffer, before it is copied into the guest's buffers.
/// It never grows past `limit`: appends that would are refused.
// SAFETY: Appends are bounds-checked against `limit`, which never exceeds the storage it was given.
@safe
struct ReplyBuilder {
    let storage: UnsafeMutableRawBufferPointer
    private(set) var count = 0
    /// The most bytes this reply may hold (the guest's buffer, or the request's size argument).
    var limit: Int

    init(storage: UnsafeMutableRawBufferPointer, limit: Int) {
        // SAFETY: the limit never exceeds the storage, which the session owns.
        unsafe self.storage = unsafe storage
        self.limit = min(limit, storage.count)
    }

    var remaining: Int { limit - count }

    /// Appends a C struct; false (and nothing written) when it does not fit.
    @discardableResult
    mutating func append<T>(_ value: T) -> Bool {
        // SAFETY: stores only after checking `size` bytes remain under the limit.
        let size = MemoryLayout<T>.size
        guard remaining >= size else { return false }
        unsafe storage.baseAddress!.advanced(by: count).storeBytes(of: value, as: T.self)
        count += size
        return true
    }

    /// Appends raw bytes; false when they do not fit.
    @discardableResult
    mutating func append(bytes: UnsafeRawBufferPointer) -> Bool {
        // SAFETY: copies only after checking the bytes fit under the limit.
        guard remaining >= bytes.count else { return false }
        if let base = bytes.baseAddress, bytes.count > 0 {
            unsafe storage.baseAddress!.advanced(by: count).copyMemory(from: base, byteCount: bytes.count)
        }
        count += bytes.count
        return true
    }

    /// Appends `n` zero bytes.
    mutating func appendZeros(_ n: Int) {
        // SAFETY: callers append zeros only for padding they have checked fits (DirectoryReplySink).
        unsafe storage.baseAddress!.advanced(by: count).initializeMemory(as: UInt8.self, repeating: 0, count: n)
        count += n
    }

    /// Room for `n` bytes that the caller fills in through the returned buffer; `commit` counts them.
    func unused(upTo n: Int) -> UnsafeMutableRawBufferPointer {
        // SAFETY: the slice is at most `remaining` bytes from `count`, inside the storage.
        unsafe UnsafeMutableRawBufferPointer(rebasing: storage[count..<count + min(n, remaining)])
    }

    /// Counts `n` bytes written through `unused`; false (and nothing counted) when `n` is more than there was
    /// room for, which only a faulty file system can say.
    mutating func commit(_ n: Int) -> Bool {
        // SAFETY: counts nothing it cannot vouch for: n must be within the room given.
        guard n >= 0, n <= remaining else { return false }
        count += n
        return true
    }

    var bytes: UnsafeRawBufferPointer { unsafe UnsafeRawBufferPointer(rebasing: storage[0..<count]) }
}
