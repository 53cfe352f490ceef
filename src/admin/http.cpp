#include "admin/http.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <exception>
#include <map>
#include <span>
#include <vector>

namespace stickyd {
namespace {

// Where the head ends ("\r\n\r\n", or "\n\n" from a lax client), or npos.
size_t head_end(std::string_view data) {
    const size_t crlf = data.find("\r\n\r\n");
    const size_t lf = data.find("\n\n");
    if (crlf == std::string_view::npos) return lf == std::string_view::npos ? lf : lf + 2;
    if (lf == std::string_view::npos || crlf + 2 < lf) return crlf + 4;
    return lf + 2;
}

// The longest line, counting its "\n"; an unfinished last line counts as it is.
size_t longest_line(std::string_view data) {
    size_t longest = 0;
    while (!data.empty()) {
        const size_t nl = data.find('\n');
        const size_t len = nl == std::string_view::npos ? data.size() : nl + 1;
        longest = std::max(longest, len);
        data.remove_prefix(len);
    }
    return longest;
}

std::string_view reason_phrase(int status) {
    switch (status) {
        case 200:
            return "OK";
        case 400:
            return "Bad Request";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 409:
            return "Conflict";
        case 411:
            return "Length Required";
        case 413:
            return "Payload Too Large";
        case 422:
            return "Unprocessable Content";
        case 431:
            return "Request Header Fields Too Large";
        case 503:
            return "Service Unavailable";
        default:
            return "Error";
    }
}

std::string render(const AdminReply& reply, bool with_body) {
    std::string out =
        fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n", reply.status,
                    reason_phrase(reply.status), reply.content_type, reply.body.size());
    if (!reply.allow.empty()) out += fmt::format("Allow: {}\r\n", reply.allow);
    out += "Connection: close\r\n\r\n";
    if (with_body) out += reply.body;
    return out;
}

// RFC 9110 tchar: what a method and a header name are made of.
bool is_tchar(char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_token(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar);
}

// A request target in origin form. Bytes above 0x7f pass, so that the router can
// say the path is not UTF-8 rather than only "malformed".
bool is_origin_form(std::string_view target) {
    return target.starts_with('/') && std::none_of(target.begin(), target.end(), [](char c) {
               const auto u = static_cast<unsigned char>(c);
               return u <= 0x20 || u == 0x7f;
           });
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// application/x-www-form-urlencoded as browsers and curl send queries.
std::optional<std::string> form_decode(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] != '%') {
            out += s[i];
        } else {
            if (s.size() - i < 3) return std::nullopt;
            const int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
            if (hi < 0 || lo < 0) return std::nullopt;
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        }
    }
    return out;
}

bool parse_query(std::string_view text, std::multimap<std::string, std::string>& out) {
    while (!text.empty()) {
        const size_t amp = text.find('&');
        const std::string_view pair = text.substr(0, amp);
        text = amp == std::string_view::npos ? std::string_view() : text.substr(amp + 1);
        if (pair.empty()) continue;
        const size_t eq = pair.find('=');
        auto key = form_decode(pair.substr(0, eq));
        auto value = form_decode(eq == std::string_view::npos ? "" : pair.substr(eq + 1));
        if (!key || !value) return false;
        out.emplace(std::move(*key), std::move(*value));
    }
    return true;
}

std::vector<std::string_view> split_lines(std::string_view head) {
    std::vector<std::string_view> lines;
    while (!head.empty()) {
        const size_t nl = head.find('\n');
        std::string_view line = head.substr(0, nl);
        head = nl == std::string_view::npos ? std::string_view() : head.substr(nl + 1);
        if (line.ends_with('\r')) line.remove_suffix(1);
        lines.push_back(line);
    }
    while (!lines.empty() && lines.back().empty()) lines.pop_back();
    return lines;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// A parsed head, or the error reply that refuses it.
struct Parsed {
    AdminRequest request;
    std::optional<AdminReply> error;
};

AdminReply malformed(std::string_view why) {
    return error_reply(400, fmt::format("malformed HTTP request: {}", why));
}

// The request line: METHOD SP origin-form SP HTTP/1.0 or HTTP/1.1.
std::optional<AdminReply> parse_request_line(std::string_view line, AdminRequest& request,
                                             std::string& target) {
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return malformed("expected METHOD /PATH HTTP/1.1");
    const std::string_view method = line.substr(0, sp1);
    target = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
    const std::string_view version = line.substr(sp2 + 1);
    if (!is_token(method)) return malformed("bad method");
    if (!is_origin_form(target)) return malformed("the target must be a path starting with /");
    if (version != "HTTP/1.1" && version != "HTTP/1.0") {
        return malformed("expected HTTP/1.0 or HTTP/1.1");
    }
    request.method = std::string(method);
    return std::nullopt;
}

bool named(std::string_view line, size_t colon, std::string_view want) {
    const std::string_view name = line.substr(0, colon);
    return std::equal(name.begin(), name.end(), want.begin(), want.end(),
                      [](char a, char b) { return (a | 0x20) == (b | 0x20); });
}

// Headers: only the framing ones matter.
std::optional<AdminReply> header_refusal(std::span<const std::string_view> lines,
                                         const HttpLimits& limits) {
    const AdminReply too_large =
        error_reply(413, fmt::format("request body larger than {} bytes", limits.max_body));
    std::optional<uint64_t> content_length;
    for (std::string_view line : lines) {
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
            return malformed("bad header line");
        }
        const std::string_view value = trim(line.substr(colon + 1));
        if (std::any_of(value.begin(), value.end(), [](char c) { return c == '\r' || c == 0; })) {
            return malformed("bad header value");
        }
        if (named(line, colon, "transfer-encoding")) {
            return error_reply(411, fmt::format("chunked request bodies are not taken; send "
                                                "Content-Length (at most {} bytes)",
                                                limits.max_body));
        }
        if (!named(line, colon, "content-length")) continue;
        uint64_t n = 0;
        const char* end = value.data() + value.size();
        if (value.empty() || std::from_chars(value.data(), end, n).ptr != end ||
            (content_length && *content_length != n)) {
            return malformed("bad Content-Length");
        }
        content_length = n;
    }
    if (content_length && *content_length > limits.max_body) return too_large;
    return std::nullopt;
}

Parsed parse_head(std::string_view head, const HttpLimits& limits) {
    Parsed out;
    const std::vector<std::string_view> lines = split_lines(head);
    if (lines.empty()) return {{}, malformed("empty request")};
    std::string target;
    if (auto error = parse_request_line(lines.front(), out.request, target)) return {{}, error};
    const std::span<const std::string_view> headers(lines.data() + 1, lines.size() - 1);
    if (auto error = header_refusal(headers, limits)) return {{}, error};
    const size_t question = target.find('?');
    out.request.path = target.substr(0, question);
    if (question != std::string::npos &&
        !parse_query(std::string_view(target).substr(question + 1), out.request.query)) {
        return {{}, error_reply(400, "bad percent-encoding in the query")};
    }
    return out;
}

// The body length a head announces, when it is one the server waits for: a
// malformed, oversized or chunked framing is refused by answer() instead, which
// needs no body to do so.
size_t awaited_body(std::string_view head, const HttpLimits& limits) {
    std::optional<uint64_t> length;
    for (std::string_view line : split_lines(head)) {
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        if (named(line, colon, "transfer-encoding")) return 0;
        if (!named(line, colon, "content-length")) continue;
        const std::string_view value = trim(line.substr(colon + 1));
        uint64_t n = 0;
        const char* end = value.data() + value.size();
        if (value.empty() || std::from_chars(value.data(), end, n).ptr != end ||
            (length && *length != n)) {
            return 0;
        }
        length = n;
    }
    return length && *length <= limits.max_body ? static_cast<size_t>(*length) : 0;
}

}  // namespace

HeadScan scan_request(std::string_view received, const HttpLimits& limits) {
    HeadScan out;
    const size_t end = head_end(received);
    const std::string_view head = received.substr(0, end);
    // Exactly max_head, whatever the read sizes: a head that ends past it, or has
    // not ended within it, is too large.
    if ((end == std::string_view::npos && received.size() >= limits.max_head) ||
        (end != std::string_view::npos && end > limits.max_head)) {
        out.state = HeadScan::State::rejected;
        out.status = 431;
        out.message = fmt::format("request head larger than {} bytes", limits.max_head);
    } else if (longest_line(head) > limits.max_line) {
        out.state = HeadScan::State::rejected;
        out.status = 431;
        out.message = fmt::format("request header line longer than {} bytes", limits.max_line);
    } else if (end != std::string_view::npos) {
        const size_t body = awaited_body(head, limits);
        if (received.size() - end >= body) {
            out.state = HeadScan::State::complete;
            out.head_size = end;
            out.body_size = body;
        }
    }
    return out;
}

std::string error_response(int status, std::string_view message) {
    return render(error_reply(status, message), true);
}

std::string answer(std::string_view request, AdminSource& source, const HttpLimits& limits,
                   AdminAccess access) {
    const size_t end = std::min(head_end(request), request.size());
    Parsed parsed = parse_head(request.substr(0, end), limits);
    if (parsed.error) return render(*parsed.error, true);
    parsed.request.body = std::string(request.substr(end));
    AdminReply reply;
    try {
        reply = handle_admin_request(parsed.request, source, access);
    } catch (const std::exception& e) {
        // The source failed (the daemon is stopping, out of memory): not the
        // request's fault, and not worth a 500.
        reply = error_reply(503, fmt::format("admin endpoint cannot answer now: {}", e.what()));
    }
    return render(reply, parsed.request.method != "HEAD");
}

std::optional<std::string> respond(std::string_view received, bool eof, AdminSource& source,
                                   const HttpLimits& limits, AdminAccess access) {
    const HeadScan scan = scan_request(received, limits);
    switch (scan.state) {
        case HeadScan::State::rejected:
            return error_response(scan.status, scan.message);
        case HeadScan::State::complete:
            return answer(received.substr(0, scan.head_size + scan.body_size), source, limits,
                          access);
        case HeadScan::State::need_more:
            break;
    }
    if (!eof || received.empty()) return std::nullopt;
    return error_response(400, "incomplete HTTP request");
}

}  // namespace stickyd
