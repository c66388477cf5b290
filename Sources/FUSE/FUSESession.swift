// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Logging
import VFSSystem

/// Serves FUSE requests for one queue: owns that queue's scratch memory, so a request allocates nothing.
/// Used by one thread only.
// SAFETY: Owns its scratch storage (allocated in `init`, freed in `deinit`); every guest length is checked before it
// indexes it.
@safe
public final class FUSESession<FS: FileSystem> {
    /// Requests larger than this are refused, except for the data of WRITE: names, symlink targets and
    /// xattr values (at most 64 KiB) all fit.
    static var requestCapacity: Int { 64 * 1024 + 8 * 1024 }
    static var headerSize: Int { FUSEReply.headerSize }

    public let server: FUSEServer<FS>
    let requestStorage: UnsafeMutableRawBufferPointer
    let replyStorage: UnsafeMutableRawBufferPointer
    let dataVectors: UnsafeMutableBufferPointer<iovec>
    /// Finishes a deferred request: its token and the bytes written into its buffers.
    let completeDeferred: @Sendable (UInt64, UInt32) -> Void
    /// The requests of this session's queue that wait off its thread.
    let deferred: DeferredWork
    /// Names the session in its log line (its queue, its pool thread).
    let label: String
    /// Requests served, by opcode (slot 0 counts opcodes this server does not know); logged at debug level
    /// when the session ends, so that a workload's round trips can be counted.
    let opcodeCounts: UnsafeMutableBufferPointer<UInt64>
    /// One warning for malformed requests per session, not one per request.
    let malformedReported = OneTimeFlag()
    /// This session's statistics (nil when they are off): written by this session's thread only.
    let counters: FUSEStatistics.Block?

    /// - Parameters:
    ///   - deferred: shared by every session of one queue, which `DeferredWork.cancelAll` ends when it stops.
    ///   - complete: called, from another thread, when a request that `handle` deferred is finished.
    // SAFETY: allocates the scratch storage this session owns, freed in deinit.
    ///   - queue: the queue the session serves (0: the high-priority queue), for the statistics.
    public init(
        server: FUSEServer<FS>, label: String = "FUSE session", queue: Int = 0, deferred: DeferredWork = DeferredWork(),
        complete: @escaping @Sendable (UInt64, UInt32) -> Void = { _, _ in }
    ) {
        self.server = server
        self.label = label
        counters = server.statistics?.block(queue: queue, label: label)
        self.deferred = deferred
        self.completeDeferred = complete
        unsafe requestStorage = .allocate(byteCount: Self.requestCapacity, alignment: 16)
        unsafe replyStorage = .allocate(byteCount: Int(server.options.maxWrite) + 64 * 1024, alignment: 16)
        unsafe dataVectors = .allocate(capacity: 1024 + 2)
        unsafe opcodeCounts = .allocate(capacity: 64)
        unsafe opcodeCounts.initialize(repeating: 0)
    }

    deinit {
        // SAFETY: frees exactly what init allocated; no request runs once the session is going away.
        if server.logger.logLevel <= .debug, let summary = unsafe Self.summary(of: UnsafeBufferPointer(opcodeCounts)) {
            server.logger.debug("\(label) served \(summary)")
        }
        unsafe requestStorage.deallocate()
        unsafe replyStorage.deallocate()
        unsafe dataVectors.deallocate()
        unsafe opcodeCounts.deallocate()
    }

    /// "N requests: lookup a, getattr b, ...", most frequent first (ties in opcode order); nil when there were none.
    static func summary(of counts: UnsafeBufferPointer<UInt64>) -> String? {
        // SAFETY: reads the counts buffer within its own bounds, during the call.
        let total = unsafe counts.reduce(0, +)
        guard total > 0 else { return nil }
        let named = counts.indices.filter { unsafe counts[$0] > 0 }.sorted { unsafe (counts[$0], $1) > (counts[$1], $0) }.map { index in
            let name = index == 0 ? "unknown" : FUSEOpcode(rawValue: UInt32(index)).map { "\($0)" } ?? "opcode \(index)"
            return unsafe "\(name) \(counts[index])"
        }
        return "\(total) requests: " + named.joined(separator: ", ")
    }

    /// Serves one request read from `readable`, writing the reply into `writable` (the guest's buffers).
    /// - Parameters:
    ///   - token: names the request if it is deferred (the transport's chain head).
    ///   - owner: what keeps `readable` and `writable` valid (the guest memory they point into), unretained:
    ///     the caller keeps it alive during the call, and a request that is deferred retains it until its reply
    ///     is written. (Unretained, so that the requests that are not deferred pay no reference counting.)
    /// - Returns: the number of bytes written into `writable` (0 for requests that have no reply), or nil when
    ///   the request was deferred and will be finished through the session's `complete` callback.
    // SAFETY: `readable` and `writable` are the transport's buffers, valid during this call (or for as long as `owner`
    // lives, for a deferred reply); every length from the header is checked by RequestLayout before it slices
    // `requestStorage`.
    public func handle(
        readable: UnsafeBufferPointer<iovec>, writable: UnsafeMutableBufferPointer<iovec>, token: UInt64 = 0,
        owner: Unmanaged<AnyObject>? = nil
    ) -> UInt32? {
        let started = counters == nil ? 0 : MonotonicClock.nanoseconds()
        // The header alone first: a WRITE's data is not copied, it goes from the guest's buffers to the file.
        var (gathered, total) = unsafe gather(readable, upTo: MemoryLayout<fuse_in_header>.size)
        var writableLength = 0
        for unsafe v in unsafe writable { unsafe writableLength += v.iov_len }
        guard gathered == MemoryLayout<fuse_in_header>.size else {
            reportMalformed("a request of \(total) bytes is shorter than its header; dropped")
            return 0
        }
        let header = unsafe requestStorage.loadUnaligned(as: fuse_in_header.self)
        let opcode = FUSEOpcode(rawValue: header.opcode)
        let slot = opcode == nil || header.opcode >= 64 ? 0 : Int(header.opcode)
        unsafe opcodeCounts[slot] &+= 1
        let hasReply = opcode?.hasReply ?? true
        guard !hasReply || writableLength >= Self.headerSize else {
            reportMalformed("request \(header.unique): no room for a reply; dropped")
            return 0
        }
        // Every length the header gives is checked against the request before anything is sliced with it.
        guard let layout = unsafe RequestLayout(header: header, total: total, capacity: requestStorage.count, isWrite: opcode == .write)
        else {
            guard hasReply else {
                reportMalformed("request \(header.unique): its lengths do not match its buffers; dropped")
                return 0
            }
            return unsafe finish(unique: header.unique, error: .invalidArgument, payload: UnsafeRawBufferPointer(start: nil, count: 0), into: writable)
        }
        (gathered, _) = unsafe gather(readable, from: gathered, upTo: layout.gatherEnd)
        var reader = unsafe ByteReader(UnsafeRawBufferPointer(rebasing: requestStorage[layout.argumentsStart..<layout.readerEnd]))
        if let opcode, !hasReply {
            serveNoReply(opcode, header: header, reader: &reader)
            count(slot, nil, bytesIn: total, bytesOut: 0, since: started)
            return 0
        }
        var context = RequestContext(unique: header.unique, nodeID: header.nodeid, uid: header.uid, gid: header.gid, pid: header.pid)
        if layout.hasExtensions, let opcode, opcode.createsNode {
            let extensions = unsafe UnsafeRawBufferPointer(rebasing: requestStorage[layout.argumentsEnd..<layout.length])
            let flags = server.flags
            if flags.contains(.securityContext) { context.securityContext = unsafe Self.securityContext(in: extensions) }
            if flags.contains(.createSupplementaryGroup) { context.supplementaryGroup = unsafe Self.supplementaryGroup(in: extensions) }
        }
        var reply = unsafe ReplyBuilder(storage: replyStorage, limit: writableLength - Self.headerSize)
        var status: Errno?
        do throws(Errno) {
            guard let opcode else { throw .noFunction }
            guard opcode == .`init` || server.isInitialized else { throw .ioError }
            // A success that would not fit the guest's buffer is refused before anything changes.
            guard reply.limit >= opcode.fixedReplySize else { throw .invalidArgument }
            switch opcode {
            case .read:
                let written = unsafe try read(context, &reader, writable: writable, writableLength: writableLength)
                count(slot, nil, bytesIn: total, bytesOut: Int(written), since: started)
                return written
            case .write:
                try unsafe write(context, &reader, readable: readable, argumentsEnd: layout.argumentsEnd, into: &reply)
            case .setlkw:
                try unsafe deferLockWait(context, &reader, writable: writable, token: token, owner: owner)
                counters?.recordDeferred(opcode: slot, bytesIn: total)
                return nil
            default:
                try serve(opcode, context, header: header, reader: &reader, into: &reply)
            }
            status = nil
        } catch {
            // The daemon's own descriptor table being full is not the guest process's EMFILE.
            status = error == .tooManyOpenFiles ? .tooManyOpenFilesInSystem : error
            if error == .ioError || error == .notConnected { reportStorageError(opcode, error) }
        }
        let written = unsafe finish(unique: header.unique, error: status, payload: status == nil ? reply.bytes : UnsafeRawBufferPointer(start: nil, count: 0), into: writable)
        count(slot, status, bytesIn: total, bytesOut: Int(written), since: started)
        return written
    }

    /// Counts a request that has its reply (statistics on), timed from `started`.
    @inline(__always)
    func count(_ slot: Int, _ error: Errno?, bytesIn: Int, bytesOut: Int, since started: Int64) {
        counters?.record(opcode: slot, error: error, bytesIn: bytesIn, bytesOut: bytesOut, nanoseconds: MonotonicClock.nanoseconds() &- started)
    }

    /// A request that failed with EIO or ENOTCONN: what a failing disk or a network file system whose servers are
    /// gone answers (a GlusterFS client without its bricks). One warning line per 10 s for the whole daemon.
    func reportStorageError(_ opcode: FUSEOpcode?, _ error: Errno) {
        guard let unreported = server.storageErrors.occurrence(now: WallClock.coarseNanoseconds()) else { return }
        server.logger.warning("\(label): \(opcode.map { "\($0)".uppercased() } ?? "a request") failed with \(error): is the storage under the shared directory failing? (one such line per 10 s; \(unreported) more since the last)")
    }

    /// One warning line per session for requests that cannot be answered at all.
    func reportMalformed(_ message: @autoclosure () -> String) {
        server.statistics?.noteMalformed()
        if malformedReported.first() {
            server.logger.warning("\(label): \(message()) (further malformed requests are not logged)")
        }
    }

    /// Walks a request's extensions (`fuse_ext_header`, then its body) and returns the first answer `match` gives
    /// for one (given its type and a reader over its body); nil when none answers or the list is malformed.
    static func firstExtension<T>(in extensions: UnsafeRawBufferPointer, _ match: (UInt32, inout ByteReader) -> T?) -> T? {
        // SAFETY: every size is checked against what remains in `extensions` (ByteReader) before a slice is made.
        var reader = unsafe ByteReader(extensions)
        while let header = reader.read(fuse_ext_header.self) {
            let size = Int(header.size)
            guard size >= MemoryLayout<fuse_ext_header>.size, size - MemoryLayout<fuse_ext_header>.size <= reader.remainingCount else { return nil }
            var body = unsafe ByteReader(UnsafeRawBufferPointer(rebasing: reader.remaining.prefix(size - MemoryLayout<fuse_ext_header>.size)))
            if let found = match(header.type, &body) { return found }
            _ = unsafe reader.read(bytes: size - MemoryLayout<fuse_ext_header>.size)
        }
        return nil
    }

    /// The first security context among a request's extensions (`fuse_secctx_header`, then `fuse_secctx`,
    /// name and value), or nil when there is none or it is malformed.
    static func securityContext(in extensions: UnsafeRawBufferPointer) -> SecurityContext? {
        // SAFETY: the value is sliced from the body only after its size is checked against what remains.
        unsafe firstExtension(in: extensions) { type, body in
            // Extension types 0...FUSE_MAX_NR_SECCTX are a fuse_secctx_header: the type is the context count.
            guard type >= 1, type <= UInt32(FUSE_MAX_NR_SECCTX.rawValue),
                  let item = body.read(fuse_secctx.self), let name = body.readName(), body.remainingCount >= Int(item.size)
            else { return nil }
            return unsafe SecurityContext(name: name.bytes, value: UnsafeRawBufferPointer(rebasing: body.remaining.prefix(Int(item.size))))
        }
    }

    /// The group of a FUSE_EXT_GROUPS extension (`fuse_supp_groups` with one group, as the kernel sends it), or
    /// nil when there is none or it is malformed.
    static func supplementaryGroup(in extensions: UnsafeRawBufferPointer) -> UInt32? {
        unsafe firstExtension(in: extensions) { type, body in
            guard type == UInt32(FUSE_EXT_GROUPS), let groups = body.read(fuse_supp_groups.self), groups.nr_groups == 1 else { return nil }
            return body.read(UInt32.self)
        }
    }

    /// Copies request bytes `start..<limit` out of guest memory, after the `start` bytes copied before (each
    /// byte once: the guest may change them meanwhile). Returns how many bytes are in `requestStorage` now and
    /// how many the request has in all.
    func gather(_ readable: UnsafeBufferPointer<iovec>, from start: Int = 0, upTo limit: Int) -> (gathered: Int, total: Int) {
        // SAFETY: copies at most `limit - start` bytes into requestStorage (limit never exceeds its size) from inside
        // each buffer's iov_len.
        var gathered = start
        var total = 0
        for unsafe v in unsafe readable {
            // This buffer holds request bytes total..<total + iov_len; copy those in gathered..<limit.
            let skip = gathered - total
            unsafe total += v.iov_len
            let n = unsafe min(v.iov_len - max(skip, 0), limit - gathered)
            if n > 0, skip >= 0, let base = unsafe v.iov_base {
                unsafe requestStorage.baseAddress!.advanced(by: gathered).copyMemory(from: base.advanced(by: skip), byteCount: n)
                gathered += n
            }
        }
        return (gathered, total)
    }

    /// Writes the out header and `payload` into the guest's buffers; returns the bytes written.
    func finish(unique: UInt64, error: Errno?, payload: UnsafeRawBufferPointer, into writable: UnsafeMutableBufferPointer<iovec>) -> UInt32 {
        // SAFETY: the fast path writes only when the first buffer holds the whole reply; otherwise WriteCursor stays
        // within every buffer.
        // The common case, a small reply that fits the first buffer: two plain copies.
        let length = Self.headerSize + payload.count
        if let first = unsafe writable.first, unsafe first.iov_len >= length, let base = unsafe first.iov_base {
            unsafe base.storeBytes(of: FUSEReply.outHeader(length: length, error: error, unique: unique), as: fuse_out_header.self)
            if payload.count > 0 { unsafe (base + Self.headerSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
            return UInt32(length)
        }
        var cursor = unsafe FUSEReply.writeHeader(into: writable, length: Self.headerSize + payload.count, error: error, unique: unique)
        unsafe cursor.write(payload)
        return UInt32(cursor.written)
    }

    /// The guest's data buffers for READ or WRITE, as `iovec`s in the session's scratch list: `buffers` without
    /// their first `skip` bytes (the headers), cut at `wanted` bytes or at the list's capacity.
    func dataBuffers(_ buffers: UnsafeBufferPointer<iovec>, skipping skip: Int, upTo wanted: Int) -> (UnsafeBufferPointer<iovec>, Int) {
        // SAFETY: each iovec built lies inside one of `buffers`, at most `dataVectors.count` of them.
        var skip = skip
        var count = 0
        var length = 0
        for unsafe v in unsafe buffers where unsafe length < wanted && count < dataVectors.count {
            guard var base = unsafe v.iov_base else { continue }
            var size = unsafe v.iov_len
            if skip > 0 {
                let s = min(skip, size)
                skip -= s
                unsafe base += s
                size -= s
            }
            guard size > 0 else { continue }
            let take = min(size, wanted - length)
            unsafe dataVectors[count] = unsafe iovec(iov_base: base, iov_len: take)
            count += 1
            length += take
        }
        return unsafe (UnsafeBufferPointer(rebasing: dataVectors[0..<count]), length)
    }

    /// READ: the host file is read straight into the guest's buffers after the out header.
    func read(_ context: RequestContext, _ reader: inout ByteReader, writable: UnsafeMutableBufferPointer<iovec>, writableLength: Int) throws(Errno) -> UInt32 {
        // SAFETY: the data buffers lie inside `writable` after the header; the file system writes at most `length`
        // bytes into them (checked after).
        guard let input = reader.read(fuse_read_in.self) else { throw .invalidArgument }
        let wanted = min(Int(input.size), writableLength - Self.headerSize, Int(server.options.maxWrite))
        let (buffers, length) = unsafe dataBuffers(UnsafeBufferPointer(writable), skipping: Self.headerSize, upTo: wanted)
        let destination = unsafe ReadDestination(buffers: buffers, length: length)
        let n = try server.fileSystem.read(context, node: context.nodeID, handle: input.fh, offset: input.offset, into: destination)
        guard n >= 0, n <= length else { throw .ioError }
        _ = unsafe FUSEReply.writeHeader(into: writable, length: Self.headerSize + n, error: nil, unique: context.unique)
        return UInt32(Self.headerSize + n)
    }

    /// WRITE: the guest's buffers after the arguments go straight to the host file.
    func write(_ context: RequestContext, _ reader: inout ByteReader, readable: UnsafeBufferPointer<iovec>, argumentsEnd: Int, into reply: inout ReplyBuilder) throws(Errno) {
        // SAFETY: the data buffers lie inside `readable` after the arguments, `wanted` bytes in all, checked against
        // the header's len.
        guard let input = reader.read(fuse_write_in.self) else { throw .invalidArgument }
        guard input.size <= server.options.maxWrite else { throw .invalidArgument }
        let headers = MemoryLayout<fuse_in_header>.size + MemoryLayout<fuse_write_in>.size
        // The data is what the header's length says follows the arguments, and the buffers hold it all.
        let wanted = Int(input.size)
        guard headers + wanted <= argumentsEnd else { throw .invalidArgument }
        let (buffers, length) = unsafe dataBuffers(readable, skipping: headers, upTo: wanted)
        guard length == wanted else { throw .invalidArgument }
        let source = unsafe WriteSource(buffers: buffers, length: length)
        let killSetID = input.write_flags & UInt32(FUSE_WRITE_KILL_SUIDGID) != 0
        let cached = input.write_flags & UInt32(FUSE_WRITE_CACHE) != 0
        let n = try server.fileSystem.write(
            context, node: context.nodeID, handle: input.fh, offset: input.offset, from: source, killSetIDBits: killSetID,
            fromPageCache: cached)
        guard n >= 0, n <= wanted else { throw .ioError }
        reply.append(fuse_write_out(size: UInt32(n), padding: 0))
    }

    /// SETLKW: waits for the lock on a thread of its own, so that neither this queue nor any other stalls; the
    /// request is finished from there, or fails with EINTR when the guest interrupts it or its ring stops.
    /// At most `FUSELimits.lockWaits` wait at once: past that, ENOLCK.
    func deferLockWait(_ context: RequestContext, _ reader: inout ByteReader, writable: UnsafeMutableBufferPointer<iovec>, token: UInt64, owner: Unmanaged<AnyObject>?) throws(Errno) {
        // SAFETY: the deferred reply copies the iovecs and holds `owner`, which keeps them mapped until the reply is
        // written.
        guard let input = reader.read(fuse_lk_in.self) else { throw .invalidArgument }
        let wait = CancellableWait()
        let waits = server.lockWaits
        guard waits.begin(wait, unique: context.unique) else {
            if waits.ceilingReported.first() {
                server.logger.warning("lock waits reached their ceiling of \(waits.limit): further SETLKW answer ENOLCK until some end")
            }
            throw .noLocksAvailable
        }
        let deferred = self.deferred
        guard deferred.register(wait) else {
            waits.end(wait, unique: context.unique)
            throw .interrupted
        }
        let reply = unsafe DeferredReply(writable: writable, owner: owner, unique: context.unique)
        let fs = server.fileSystem
        let complete = completeDeferred
        let lock = FileLock(start: input.lk.start, end: input.lk.end, type: input.lk.type, pid: input.lk.pid)
        let flock = input.lk_flags & UInt32(FUSE_LK_FLOCK) != 0
        do {
            try SystemThread.detached(name: "lock-wait") {
                var status: Errno? = nil
                do throws(Errno) {
                    try fs.setlk(context, node: context.nodeID, handle: input.fh, owner: input.owner, lock: lock, flock: flock, wait: wait)
                } catch {
                    status = error
                }
                deferred.unregister(wait)
                waits.end(wait, unique: context.unique)
                complete(token, reply.finish(error: status))
            }
        } catch {
            deferred.unregister(wait)
            waits.end(wait, unique: context.unique)
            throw .noLocksAvailable
        }
    }

    func serveNoReply(_ opcode: FUSEOpcode, header: fuse_in_header, reader: inout ByteReader) {
        let context = RequestContext(unique: header.unique, nodeID: header.nodeid, uid: header.uid, gid: header.gid, pid: header.pid)
        switch opcode {
        case .forget:
            if let input = reader.read(fuse_forget_in.self) {
                server.fileSystem.forget(context, node: header.nodeid, count: input.nlookup)
            }
        case .batchForget:
            guard let input = reader.read(fuse_batch_forget_in.self) else { return }
            for _ in 0..<input.count {
                guard let one = reader.read(fuse_forget_one.self) else { break }
                server.fileSystem.forget(context, node: one.nodeid, count: one.nlookup)
            }
        case .interrupt:
            if let input = reader.read(fuse_interrupt_in.self) {
                server.lockWaits.interrupt(input.unique)
            }
        default:
            break
        }
    }

    /// Decodes one request with a reply, calls the file system, and encodes the reply payload.
    func serve(_ opcode: FUSEOpcode, _ context: RequestContext, header: fuse_in_header, reader: inout ByteReader, into reply: inout ReplyBuilder) throws(Errno) {
        // SAFETY: names and values are views of requestStorage made by ByteReader (bounds-checked); reply writes go
        // through ReplyBuilder (bounded by its limit).
        let fs = server.fileSystem
        let node = header.nodeid
        switch opcode {
        case .`init`:
            let size = reader.remainingCount
            guard size >= 16 else { throw .invalidArgument }
            var input = fuse_init_in()
            unsafe withUnsafeMutableBytes(of: &input) { unsafe $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: reader.remaining.prefix(MemoryLayout<fuse_init_in>.size))) }
            try server.initialize(input, inputSize: size, into: &reply)
        case .destroy:
            server.reset()
        case .lookup:
            guard let name = reader.readName() else { throw .invalidArgument }
            let entry = try fs.lookup(context, parent: node, name: name)
            reply.append(FUSEEncoding.entryOut(entry))
        case .getattr:
            guard let input = reader.read(fuse_getattr_in.self) else { throw .invalidArgument }
            let handle: UInt64? = input.getattr_flags & UInt32(FUSE_GETATTR_FH) != 0 ? input.fh : nil
            reply.append(FUSEEncoding.attrOut(try fs.getattr(context, node: node, handle: handle)))
        case .statx:
            guard let input = reader.read(fuse_statx_in.self) else { throw .invalidArgument }
            let handle: UInt64? = input.getattr_flags & UInt32(FUSE_GETATTR_FH) != 0 ? input.fh : nil
            reply.append(FUSEEncoding.statxOut(try fs.statx(context, node: node, handle: handle, syncFlags: input.sx_flags)))
        case .readlink:
            // Read whole into scratch space first: a target longer than the guest's buffer is an error, never
            // a target cut short.
            let n = try unsafe withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 1) { (buffer) throws(Errno) -> Int in
                let n = try unsafe fs.readlink(context, node: node, into: buffer)
                guard n >= 0, n <= buffer.count else { throw .ioError }
                guard unsafe reply.append(bytes: UnsafeRawBufferPointer(rebasing: buffer[0..<n])) else { throw .range }
                return n
            }
            _ = n
        case .open, .opendir:
            guard let input = reader.read(fuse_open_in.self) else { throw .invalidArgument }
            var context = context
            context.killSetIDBitsOnTruncate = input.open_flags & UInt32(FUSE_OPEN_KILL_SUIDGID) != 0
            let opened = opcode == .open
                ? try fs.open(context, node: node, flags: input.flags)
                : try fs.opendir(context, node: node, flags: input.flags)
            reply.append(fuse_open_out(fh: opened.handle, open_flags: opened.flags.rawValue, padding: 0))
        case .release, .releasedir:
            guard let input = reader.read(fuse_release_in.self) else { throw .invalidArgument }
            if opcode == .release {
                try fs.release(context, node: node, handle: input.fh, releaseFlags: input.release_flags)
            } else {
                try fs.releasedir(context, node: node, handle: input.fh)
            }
        case .flush:
            guard let input = reader.read(fuse_flush_in.self) else { throw .invalidArgument }
            try fs.flush(context, node: node, handle: input.fh, lockOwner: input.lock_owner)
        case .statfs:
            let stats = try fs.statfs(context, node: node)
            var out = fuse_statfs_out()
            out.st.blocks = stats.blocks
            out.st.bfree = stats.freeBlocks
            out.st.bavail = stats.availableBlocks
            out.st.files = stats.files
            out.st.ffree = stats.freeFiles
            out.st.bsize = stats.blockSize
            out.st.namelen = stats.nameMax
            out.st.frsize = stats.fragmentSize
            reply.append(out)
        case .readdir, .readdirplus:
            guard let input = reader.read(fuse_read_in.self) else { throw .invalidArgument }
            reply.limit = min(reply.limit, Int(input.size))
            var sink = DirectoryReplySink(reply: reply, plus: opcode == .readdirplus)
            try fs.readdir(context, node: node, handle: input.fh, offset: input.offset, plus: opcode == .readdirplus, into: &sink)
            reply = sink.reply
        case .access:
            guard let input = reader.read(fuse_access_in.self) else { throw .invalidArgument }
            try fs.access(context, node: node, mask: input.mask)
        case .getxattr:
            guard let input = reader.read(fuse_getxattr_in.self), let name = reader.readName() else { throw .invalidArgument }
            try unsafe attributeReply(size: input.size, into: &reply) { (buffer) throws(Errno) -> Int in
                try unsafe fs.getxattr(context, node: node, name: name, into: buffer)
            }
        case .listxattr:
            guard let input = reader.read(fuse_getxattr_in.self) else { throw .invalidArgument }
            try unsafe attributeReply(size: input.size, into: &reply) { (buffer) throws(Errno) -> Int in
                try unsafe fs.listxattr(context, node: node, into: buffer)
            }
        case .setattr:
            guard let input = reader.read(fuse_setattr_in.self) else { throw .invalidArgument }
            let valid = input.valid
            func time(_ set: UInt32, _ now: UInt32, _ seconds: UInt64, _ nanoseconds: UInt32) -> TimeChange {
                // SAFETY: no pointer here; part of serve, whose views are bounds-checked.
                guard valid & set != 0 else { return .omit }
                if valid & now != 0 { return .now }
                return .to(FileTime(seconds: Int64(bitPattern: seconds), nanoseconds: nanoseconds))
            }
            let changes = AttributeChanges(
                handle: valid & UInt32(FATTR_FH) != 0 ? input.fh : nil,
                mode: valid & UInt32(FATTR_MODE) != 0 ? input.mode : nil,
                uid: valid & UInt32(FATTR_UID) != 0 ? input.uid : nil,
                gid: valid & UInt32(FATTR_GID) != 0 ? input.gid : nil,
                size: valid & UInt32(FATTR_SIZE) != 0 ? input.size : nil,
                accessTime: time(UInt32(FATTR_ATIME), UInt32(FATTR_ATIME_NOW), input.atime, input.atimensec),
                modificationTime: time(UInt32(FATTR_MTIME), UInt32(FATTR_MTIME_NOW), input.mtime, input.mtimensec),
                killSetIDBits: valid & UInt32(FATTR_KILL_SUIDGID) != 0)
            reply.append(FUSEEncoding.attrOut(try fs.setattr(context, node: node, changes: changes)))
        case .mknod:
            guard let input = reader.read(fuse_mknod_in.self), let name = reader.readName() else { throw .invalidArgument }
            let entry = try fs.mknod(context, parent: node, name: name, mode: input.mode, device: input.rdev, umask: umask(input.umask))
            reply.append(FUSEEncoding.entryOut(entry))
        case .mkdir:
            guard let input = reader.read(fuse_mkdir_in.self), let name = reader.readName() else { throw .invalidArgument }
            let entry = try fs.mkdir(context, parent: node, name: name, mode: input.mode, umask: umask(input.umask))
            reply.append(FUSEEncoding.entryOut(entry))
        case .symlink:
            guard let name = reader.readName(), let target = reader.readName() else { throw .invalidArgument }
            reply.append(FUSEEncoding.entryOut(try fs.symlink(context, parent: node, name: name, target: target)))
        case .link:
            guard let input = reader.read(fuse_link_in.self), let name = reader.readName() else { throw .invalidArgument }
            reply.append(FUSEEncoding.entryOut(try fs.link(context, node: input.oldnodeid, newParent: node, newName: name)))
        case .unlink, .rmdir:
            guard let name = reader.readName() else { throw .invalidArgument }
            if opcode == .unlink {
                try fs.unlink(context, parent: node, name: name)
            } else {
                try fs.rmdir(context, parent: node, name: name)
            }
        case .rename:
            guard let input = reader.read(fuse_rename_in.self), let name = reader.readName(), let newName = reader.readName()
            else { throw .invalidArgument }
            try fs.rename(context, parent: node, name: name, newParent: input.newdir, newName: newName, flags: 0)
        case .rename2:
            guard let input = reader.read(fuse_rename2_in.self), let name = reader.readName(), let newName = reader.readName()
            else { throw .invalidArgument }
            try fs.rename(context, parent: node, name: name, newParent: input.newdir, newName: newName, flags: input.flags)
        case .create, .tmpfile:
            guard let input = reader.read(fuse_create_in.self) else { throw .invalidArgument }
            var context = context
            context.killSetIDBitsOnTruncate = input.open_flags & UInt32(FUSE_OPEN_KILL_SUIDGID) != 0
            let (entry, opened): (Entry, OpenReply)
            if opcode == .create {
                guard let name = reader.readName() else { throw .invalidArgument }
                (entry, opened) = try fs.create(context, parent: node, name: name, flags: input.flags, mode: input.mode, umask: umask(input.umask))
            } else {
                (entry, opened) = try fs.tmpfile(context, parent: node, flags: input.flags, mode: input.mode, umask: umask(input.umask))
            }
            reply.append(FUSEEncoding.entryOut(entry))
            reply.append(fuse_open_out(fh: opened.handle, open_flags: opened.flags.rawValue, padding: 0))
        case .fsync, .fsyncdir:
            guard let input = reader.read(fuse_fsync_in.self) else { throw .invalidArgument }
            try fs.fsync(context, node: node, handle: input.fh, dataOnly: input.fsync_flags & UInt32(FUSE_FSYNC_FDATASYNC) != 0, directory: opcode == .fsyncdir)
        case .fallocate:
            guard let input = reader.read(fuse_fallocate_in.self) else { throw .invalidArgument }
            try fs.fallocate(context, node: node, handle: input.fh, offset: input.offset, length: input.length, mode: input.mode)
        case .lseek:
            guard let input = reader.read(fuse_lseek_in.self) else { throw .invalidArgument }
            let offset = try fs.lseek(context, node: node, handle: input.fh, offset: input.offset, whence: input.whence)
            reply.append(fuse_lseek_out(offset: offset))
        case .copyFileRange:
            guard let input = reader.read(fuse_copy_file_range_in.self) else { throw .invalidArgument }
            // The reply counts in 32 bits: at most that much is copied (Linux asks for no more itself).
            let length = min(input.len, UInt64(UInt32.max) & ~4095)
            let n = try fs.copyFileRange(context, node: node, handle: input.fh_in, offset: input.off_in, toNode: input.nodeid_out, toHandle: input.fh_out, toOffset: input.off_out, length: length, flags: input.flags)
            guard n >= 0, UInt64(n) <= length else { throw .ioError }
            reply.append(fuse_write_out(size: UInt32(n), padding: 0))
        case .setxattr:
            // With SETXATTR_EXT the arguments carry setxattr_flags too (16 bytes instead of 8).
            let extended = server.flags.contains(.setxattrExtended)
            guard let size = reader.read(UInt32.self), let flags = reader.read(UInt32.self) else { throw .invalidArgument }
            var extraFlags: UInt32 = 0
            if extended {
                guard let f = reader.read(UInt32.self), reader.read(UInt32.self) != nil else { throw .invalidArgument }
                extraFlags = f
            }
            guard let name = reader.readName(), reader.remainingCount >= Int(size) else { throw .invalidArgument }
            let value = unsafe UnsafeRawBufferPointer(rebasing: reader.remaining.prefix(Int(size)))
            try unsafe fs.setxattr(context, node: node, name: name, value: value, flags: flags, killSGID: extraFlags & UInt32(FUSE_SETXATTR_ACL_KILL_SGID) != 0)
        case .removexattr:
            guard let name = reader.readName() else { throw .invalidArgument }
            try fs.removexattr(context, node: node, name: name)
        case .syncfs:
            try fs.syncfs(context, node: node)
        case .getlk:
            guard let input = reader.read(fuse_lk_in.self) else { throw .invalidArgument }
            let lock = FileLock(start: input.lk.start, end: input.lk.end, type: input.lk.type, pid: input.lk.pid)
            let found = try fs.getlk(context, node: node, handle: input.fh, owner: input.owner, lock: lock)
            reply.append(fuse_lk_out(lk: fuse_file_lock(start: found.start, end: found.end, type: found.type, pid: found.pid)))
        case .setlk:
            guard let input = reader.read(fuse_lk_in.self) else { throw .invalidArgument }
            let lock = FileLock(start: input.lk.start, end: input.lk.end, type: input.lk.type, pid: input.lk.pid)
            try fs.setlk(context, node: node, handle: input.fh, owner: input.owner, lock: lock, flock: input.lk_flags & UInt32(FUSE_LK_FLOCK) != 0, wait: nil)
        default:
            throw .noFunction
        }
    }

    /// GETXATTR and LISTXATTR: `size` 0 asks for the value's size (`fuse_getxattr_out`); otherwise the value
    /// itself, in at most `size` bytes and no more than the guest's buffer holds (ERANGE when it does not fit).
    /// `body` is the file system's call: an empty buffer asks it for the size only, so it never gets one when
    /// the value is wanted; and what it says it wrote is checked against what it was given.
    func attributeReply(size: UInt32, into reply: inout ReplyBuilder, _ body: (UnsafeMutableRawBufferPointer) throws(Errno) -> Int) throws(Errno) {
        // SAFETY: the file system writes into `reply.unused`, at most `room` bytes, and what it says it wrote is
        // checked by commit.
        if size == 0 {
            let needed = try unsafe body(UnsafeMutableRawBufferPointer(start: nil, count: 0))
            guard needed >= 0, needed <= Int(UInt32.max) else { throw .ioError }
            reply.append(fuse_getxattr_out(size: UInt32(needed), padding: 0))
            return
        }
        let room = min(Int(size), reply.remaining)
        guard room > 0 else {
            // No room at all: only an empty value (or list) fits.
            guard try unsafe body(UnsafeMutableRawBufferPointer(start: nil, count: 0)) == 0 else { throw .range }
            return
        }
        let n = try unsafe body(reply.unused(upTo: room))
        guard reply.commit(n) else { throw .ioError }
    }

    /// The umask a creating request carries is the guest's only when DONT_MASK was agreed; otherwise the guest
    /// kernel applied it already.
    func umask(_ value: UInt32) -> UInt32 {
        server.flags.contains(.dontMask) ? value : 0
    }
}

/// Encoders of the attribute structs shared by every reply that carries attributes.
enum FUSEEncoding {
    static func attr(_ s: FileStat) -> fuse_attr {
        var a = fuse_attr()
        a.ino = s.inode
        a.size = UInt64(bitPattern: s.size)
        a.blocks = UInt64(bitPattern: s.blocks)
        a.atime = UInt64(bitPattern: s.accessTime.seconds)
        a.mtime = UInt64(bitPattern: s.modificationTime.seconds)
        a.ctime = UInt64(bitPattern: s.changeTime.seconds)
        a.atimensec = s.accessTime.nanoseconds
        a.mtimensec = s.modificationTime.nanoseconds
        a.ctimensec = s.changeTime.nanoseconds
        a.mode = s.mode
        a.nlink = UInt32(truncatingIfNeeded: s.linkCount)
        a.uid = s.uid
        a.gid = s.gid
        a.rdev = UInt32(truncatingIfNeeded: s.specialDevice)
        a.blksize = UInt32(truncatingIfNeeded: s.blockSize)
        return a
    }

    /// The reply of GETATTR and SETATTR.
    static func attrOut(_ reply: AttributeReply) -> fuse_attr_out {
        var out = fuse_attr_out()
        out.attr_valid = reply.timeout.seconds
        out.attr_valid_nsec = reply.timeout.nanoseconds
        out.attr = attr(reply.attributes)
        return out
    }

    /// The STATX_ATTR_* flags passed on: what the file is (compressed, immutable, append-only, nodump,
    /// encrypted, verity). Not mount-root or DAX, which describe the host's mounts and memory.
    static let statxAttributesPassed: UInt64 = 0x4 | 0x10 | 0x20 | 0x40 | 0x800 | 0x100000

    /// The reply of STATX: the fields STATX_BASIC_STATS and STATX_BTIME name, as far as the host filled them.
    static func statxOut(_ reply: StatxReply) -> fuse_statx_out {
        let x = reply.attributes
        let s = attr(x.stat)
        var out = fuse_statx_out()
        out.attr_valid = reply.timeout.seconds
        out.attr_valid_nsec = reply.timeout.nanoseconds
        out.stat.mask = x.mask & (ExtendedFileStat.basicStatsBits | ExtendedFileStat.birthTimeBit)
        out.stat.blksize = s.blksize
        out.stat.attributes = x.attributes & statxAttributesPassed
        out.stat.attributes_mask = x.attributesMask & statxAttributesPassed
        out.stat.nlink = s.nlink
        out.stat.uid = s.uid
        out.stat.gid = s.gid
        out.stat.mode = UInt16(truncatingIfNeeded: s.mode)
        out.stat.ino = s.ino
        out.stat.size = s.size
        out.stat.blocks = s.blocks
        func time(_ t: FileTime) -> fuse_sx_time {
            var v = fuse_sx_time()
            v.tv_sec = t.seconds
            v.tv_nsec = t.nanoseconds
            return v
        }
        out.stat.atime = time(x.stat.accessTime)
        out.stat.mtime = time(x.stat.modificationTime)
        out.stat.ctime = time(x.stat.changeTime)
        if x.mask & ExtendedFileStat.birthTimeBit != 0 { out.stat.btime = time(x.stat.birthTime) }
        // Major and minor as the guest's new_encode_dev/MKDEV read them back from GETATTR's 32-bit rdev.
        out.stat.rdev_major = (s.rdev >> 8) & 0xfff
        out.stat.rdev_minor = (s.rdev & 0xff) | ((s.rdev >> 12) & 0xfff00)
        return out
    }

    static func entryOut(_ entry: Entry) -> fuse_entry_out {
        var out = fuse_entry_out()
        out.nodeid = entry.nodeID
        out.generation = entry.generation
        out.entry_valid = entry.entryTimeout.seconds
        out.entry_valid_nsec = entry.entryTimeout.nanoseconds
        out.attr_valid = entry.attributeTimeout.seconds
        out.attr_valid_nsec = entry.attributeTimeout.nanoseconds
        out.attr = attr(entry.attributes)
        if entry.isSubmount { out.attr.flags |= UInt32(FUSE_ATTR_SUBMOUNT) }
        return out
    }
}

/// Scatters bytes across the guest's writable buffers.
// SAFETY: Writes stay within the buffers it was given, which are valid for the request it answers.
@safe
struct WriteCursor {
    let buffers: UnsafeMutableBufferPointer<iovec>
    var index = 0
    var offset = 0
    private(set) var written = 0

    // SAFETY: keeps the caller's buffers, valid for the request being answered.
    init(_ buffers: UnsafeMutableBufferPointer<iovec>) { unsafe self.buffers = unsafe buffers }

    mutating func write(_ bytes: UnsafeRawBufferPointer) {
        // SAFETY: each copy is at most what remains of the current buffer and of `bytes`.
        var done = 0
        while unsafe done < bytes.count && index < buffers.count {
            let buffer = unsafe buffers[index]
            let n = unsafe min(buffer.iov_len - offset, bytes.count - done)
            if n > 0 {
                unsafe buffer.iov_base!.advanced(by: offset).copyMemory(from: bytes.baseAddress!.advanced(by: done), byteCount: n)
                done += n
                offset += n
                written += n
            }
            if unsafe offset == buffer.iov_len {
                index += 1
                offset = 0
            }
        }
    }
}

/// Encodes directory entries (`fuse_dirent`, or `fuse_direntplus` for READDIRPLUS), each padded to 8 bytes.
struct DirectoryReplySink: DirectoryEntrySink {
    var reply: ReplyBuilder
    let plus: Bool

    static var direntHeader: Int { 24 }  // FUSE_NAME_OFFSET
    static var entryOutSize: Int { MemoryLayout<fuse_entry_out>.size }

    func recordSize(nameLength: Int) -> Int {
        let size = (plus ? Self.entryOutSize : 0) + Self.direntHeader + nameLength
        return (size + 7) & ~7
    }

    func fits(nameLength: Int) -> Bool { recordSize(nameLength: nameLength) <= reply.remaining }

    mutating func add(name: UnsafeRawBufferPointer, inode: UInt64, type: UInt32, offset: UInt64, entry: Entry?) -> Bool {
        // SAFETY: every append is bounded by the reply's limit (ReplyBuilder), checked first by recordSize.
        let size = recordSize(nameLength: name.count)
        guard size <= reply.remaining else { return false }
        let start = reply.count
        if plus {
            if let entry {
                reply.append(FUSEEncoding.entryOut(entry))
            } else {
                reply.append(fuse_entry_out())
            }
        }
        reply.append(UInt64(inode))
        reply.append(UInt64(offset))
        reply.append(UInt32(name.count))
        reply.append(UInt32(type))
        unsafe reply.append(bytes: name)
        reply.appendZeros(size - (reply.count - start))
        return true
    }
}
