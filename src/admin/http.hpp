// HTTP/1.x for the admin endpoint as pure functions of bytes: where a request head
// ends and whether it is acceptable so far (scan_request), and the whole response
// for a complete head (answer). No sockets and no threads, so the server
// (src/admin.cpp) can read heads on one poll loop and answer them on a pool, and
// the tests and tests/fuzz/fuzz_admin.cpp can drive exactly the same code with a
// buffer.
//
// One request per connection: every response says "Connection: close". A body
// comes with Content-Length, at most max_body bytes (beyond: 413 before it is
// read; chunked: 411); POST /targets reads it, other endpoints ignore it.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "admin/api.hpp"

namespace stickyd {

struct HttpLimits {
    size_t max_head = 16 * 1024;  // request line + headers; beyond: 431
    size_t max_line = 8 * 1024;   // one line of the head, with its line end; beyond: 431
    size_t max_body = 4 * 1024;   // beyond: 413
};

// What the bytes received so far on a connection amount to.
struct HeadScan {
    enum class State { need_more, complete, rejected } state = State::need_more;
    size_t head_size = 0;  // complete: bytes of the head, through the blank line
    size_t body_size = 0;  // complete: bytes of the body that follow it
    int status = 0;        // rejected: the error status (431)...
    std::string message;   // ...and its one-line message
};
HeadScan scan_request(std::string_view received, const HttpLimits& limits);

// The complete response (status line, headers, body) to a complete request: its
// head and the body scan_request counted. Never throws and never answers 500:
// malformed heads get 400, invalid UTF-8 in a request 400 naming where, and a
// failing source a 503.
std::string answer(std::string_view request, AdminSource& source, const HttpLimits& limits,
                   AdminAccess access = AdminAccess::full);

// A complete response carrying an error_reply (for 408, 431, 503 from the server).
std::string error_response(int status, std::string_view message);

// What the server sends for `received`: nullopt while the head is incomplete and
// more may come (eof false); at eof an incomplete head is a 400.
std::optional<std::string> respond(std::string_view received, bool eof, AdminSource& source,
                                   const HttpLimits& limits,
                                   AdminAccess access = AdminAccess::full);

}  // namespace stickyd
