#include "stickyctl/admin_client.hpp"

#include <fmt/core.h>
#include <httplib.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "stickyd/address.hpp"

namespace stickyd {
namespace {

constexpr int kTimeoutSeconds = 10;

AdminUnreachable unreachable(std::string_view where, std::string_view why) {
    return AdminUnreachable(fmt::format(
        "cannot reach stickyd's admin endpoint at {}: {} (is stickyd running? choose the "
        "endpoint with --admin PATH|HOST:PORT)",
        where, why));
}

AdminResponse parse_response(std::string_view where, const std::string& raw) {
    const size_t end = raw.find("\r\n\r\n");
    if (!raw.starts_with("HTTP/1.") || raw.size() < 12 || end == std::string::npos) {
        throw unreachable(where, "the answer is not an HTTP response");
    }
    AdminResponse response;
    response.status = std::atoi(raw.c_str() + 9);
    response.body = raw.substr(end + 4);
    return response;
}

AdminResponse unix_request(const std::string& path, const std::string& method,
                           const std::string& target, const std::string& body) {
    const std::string where = "unix socket " + path;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) throw unreachable(where, "path too long");
    std::memcpy(addr.sun_path, path.data(), path.size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw unreachable(where, std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        throw unreachable(where, std::strerror(errno));
    }
    timeval tv{kTimeoutSeconds, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const std::string request = fmt::format(
        "{} {} HTTP/1.1\r\nHost: stickyd\r\nUser-Agent: stickyctl\r\nConnection: close\r\n"
        "{}Content-Length: {}\r\n\r\n{}",
        method, target, body.empty() ? "" : "Content-Type: application/json\r\n", body.size(),
        body);
    for (size_t sent = 0; sent < request.size();) {
        const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw unreachable(where, std::strerror(errno));
        sent += static_cast<size_t>(n);
    }
    std::string raw;
    char buffer[16384];
    for (;;) {
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            throw unreachable(where,
                              errno == EAGAIN ? "no answer within 10 s" : std::strerror(errno));
        }
        if (n == 0) break;
        raw.append(buffer, static_cast<size_t>(n));
    }
    return parse_response(where, raw);
}

AdminResponse tcp_request(const SocketAddress& address, const std::string& method,
                          const std::string& target, const std::string& body) {
    const std::string where = "http://" + address.to_string();
    std::string host = address.to_string();
    host = host.substr(0, host.rfind(':'));
    if (host.starts_with('[')) host = host.substr(1, host.size() - 2);
    httplib::Client client(host, address.port());
    client.set_connection_timeout(kTimeoutSeconds);
    client.set_read_timeout(kTimeoutSeconds);
    client.set_write_timeout(kTimeoutSeconds);
    client.set_keep_alive(false);
    httplib::Result result = method == "POST"     ? client.Post(target, body, "application/json")
                             : method == "DELETE" ? client.Delete(target)
                                                  : client.Get(target);
    if (!result) {
        switch (result.error()) {
            case httplib::Error::Connection:
                throw unreachable(where, "cannot connect (nothing listening there?)");
            case httplib::Error::Read:
                throw unreachable(where, "no complete answer within 10 s");
            default:
                throw unreachable(where, httplib::to_string(result.error()));
        }
    }
    return {result->status, result->body};
}

}  // namespace

AdminResponse admin_request(const std::string& admin, const std::string& method,
                            const std::string& target, const std::string& json_body) {
    if (auto address = SocketAddress::parse(admin)) {
        return tcp_request(*address, method, target, json_body);
    }
    return unix_request(admin, method, target, json_body);
}

std::string url_encode(std::string_view text) {
    std::string out;
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += fmt::format("%{:02X}", c);
        }
    }
    return out;
}

}  // namespace stickyd
