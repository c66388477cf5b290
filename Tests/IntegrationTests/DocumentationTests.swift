// SPDX-License-Identifier: Apache-2.0

import Foundation
import Testing

/// The README and the pages of docs/: every relative link names a file that exists, and an anchor one of its
/// headings (as GitHub makes them: lower case, punctuation dropped, spaces as hyphens).
@Suite("Documentation")
struct DocumentationTests {
    static let pages: [String] = {
        let docs = (try? FileManager.default.contentsOfDirectory(atPath: "\(repositoryRoot)/docs")) ?? []
        return ["README.md"] + docs.filter { $0.hasSuffix(".md") }.sorted().map { "docs/\($0)" }
    }()

    /// The page's text without its fenced code blocks.
    static func prose(_ page: String) throws -> String {
        let text = try String(contentsOfFile: "\(repositoryRoot)/\(page)", encoding: .utf8)
        var kept: [Substring] = []
        var fenced = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") { fenced.toggle(); continue }
            if !fenced { kept.append(line) }
        }
        return kept.joined(separator: "\n")
    }

    static func anchors(_ page: String) throws -> Set<String> {
        var seen: [String: Int] = [:]
        var result = Set<String>()
        for line in try prose(page).split(separator: "\n") where line.hasPrefix("#") {
            let title = line.drop { $0 == "#" }
            guard title.first == " " else { continue }
            let slug = String(title.dropFirst().lowercased().filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == " " })
                .replacingOccurrences(of: " ", with: "-")
            let n = seen[slug, default: 0]
            seen[slug] = n + 1
            result.insert(n == 0 ? slug : "\(slug)-\(n)")
        }
        return result
    }

    @Test("every relative link in the README and in docs/ resolves, anchors included")
    func linksResolve() throws {
        #expect(Self.pages.count > 5)
        let link = try NSRegularExpression(pattern: #"\]\(([^)\s]+)\)"#)
        var checked = 0
        for page in Self.pages {
            let text = try Self.prose(page)
            for match in link.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                let target = String(text[Range(match.range(at: 1), in: text)!])
                if target.contains("://") || target.hasPrefix("mailto:") { continue }
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
                let path = String(parts[0])
                let destination = path.isEmpty ? page
                    : URL(fileURLWithPath: "\(repositoryRoot)/\(page)").deletingLastPathComponent().appendingPathComponent(path)
                        .standardized.path.replacingOccurrences(of: "\(repositoryRoot)/", with: "")
                let exists = FileManager.default.fileExists(atPath: "\(repositoryRoot)/\(destination)")
                #expect(exists, "\(page): \(target)")
                if exists, parts.count == 2, destination.hasSuffix(".md") {
                    #expect(try Self.anchors(destination).contains(String(parts[1])), "\(page): \(target)")
                }
                checked += 1
            }
        }
        #expect(checked > 30)
    }

    @Test("the README is short, and the two commands come first")
    func readmeShape() throws {
        let text = try String(contentsOfFile: "\(repositoryRoot)/README.md", encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count <= 350, "\(lines.count) lines")
        let sections = lines.filter { $0.hasPrefix("## ") }
        #expect(sections.first == "## The two commands", "\(sections.prefix(2))")
        #expect(text.contains("\nqemu/bench-cache\n") && text.contains("\nqemu/prepare-guest && swift build && swift test\n"))
    }
}
