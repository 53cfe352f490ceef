// Socket addresses and the normalised client IP that stickiness hashes.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace stickyd {

// An IPv4 or IPv6 endpoint. Value type; cheap to copy.
class SocketAddress {
  public:
    SocketAddress() = default;

    // Accepts "1.2.3.4:80", "[::1]:80", "[::ffff:1.2.3.4]:80". Port 1-65535.
    // Returns nullopt on anything else (no DNS names here).
    static std::optional<SocketAddress> parse(std::string_view text);
    static SocketAddress from_sockaddr(const sockaddr* sa, socklen_t len);

    const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage_); }
    socklen_t len() const { return len_; }
    int family() const { return storage_.ss_family; }
    uint16_t port() const;
    // "1.2.3.4:80" or "[::1]:80"; parse(to_string()) round-trips.
    std::string to_string() const;

    friend bool operator==(const SocketAddress& a, const SocketAddress& b);

  private:
    sockaddr_storage storage_{};
    socklen_t len_ = 0;
};

// A client IP reduced to what stickiness hashes: IPv4-mapped IPv6 becomes IPv4
// (so dual-stack and v4-only listeners agree), then the prefix mask is applied.
struct IpKey {
    std::array<uint8_t, 16> bytes{};  // network byte order; only the first `size` are used
    uint8_t size = 0;                 // 4 or 16

    friend bool operator==(const IpKey&, const IpKey&) = default;
};

// Normalises the IP part of a socket address (port is ignored).
IpKey ip_key_of(const sockaddr* sa);
// inet_pton on a string_view: writes the 4 or 16 address bytes of `family` to out.
bool parse_ip_bytes(int family, std::string_view text, void* out);
// Parses a bare IP ("1.2.3.4", "::1", "::ffff:1.2.3.4") and normalises it.
std::optional<IpKey> parse_ip(std::string_view text);
// Keeps the first prefix_v4 / prefix_v6 bits, zeroing the rest.
IpKey apply_prefix(IpKey key, unsigned prefix_v4, unsigned prefix_v6);
std::string to_string(const IpKey& key);

// What an address speaks on the wire: 4 for IPv4 and IPv4-mapped IPv6, 6 for other
// IPv6, 0 for neither.
int ip_version(const SocketAddress& address);

// preserve_client_ip: the address (port 0) that a socket for `target` binds to so
// that its connection comes from `client`'s IP, in the socket's own family (an
// IPv4-mapped client is unmapped for an IPv4 target; an IPv4 client is mapped for
// an IPv4-mapped target). nullopt when one connection cannot carry both: an IPv6
// client and an IPv4 target, or the other way round.
std::optional<SocketAddress> transparent_source(const SocketAddress& client,
                                                const SocketAddress& target);

}  // namespace stickyd
