// stickyctl's side of the admin endpoint: one HTTP/1.1 request, Connection: close,
// to a unix socket path or a TCP host:port.
#pragma once

#include <stdexcept>
#include <string>

namespace stickyd {

// A one-line reason the daemon could not be asked (names the socket and --admin).
struct AdminUnreachable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct AdminResponse {
    int status = 0;
    std::string body;
};

// `admin` is "HOST:PORT" (an IPv4 or bracketed IPv6 address) for TCP, anything else
// is a unix socket path. `target` is the request target, e.g. "/ring?group=web";
// a non-empty `json_body` is sent as application/json.
AdminResponse admin_request(const std::string& admin, const std::string& method,
                            const std::string& target, const std::string& json_body = {});

// Percent-encodes everything but unreserved characters (RFC 3986), for one path
// segment or query value.
std::string url_encode(std::string_view text);

}  // namespace stickyd
