#include "stickyd/address.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace stickyd {
namespace {

// Strict decimal port: 1-65535, digits only, no sign, no leading zero. Config
// files are read by people; "080" or "+80" is more likely a typo than intent.
std::optional<uint16_t> parse_port(std::string_view text) {
    if (text.empty() || text.size() > 5 || text[0] == '0') return std::nullopt;
    uint32_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return std::nullopt;
        value = value * 10 + static_cast<uint32_t>(c - '0');
    }
    if (value > 65535) return std::nullopt;
    return static_cast<uint16_t>(value);
}

IpKey key_from_v4(const in_addr& addr) {
    IpKey key;
    key.size = 4;
    std::memcpy(key.bytes.data(), &addr, 4);
    return key;
}

IpKey key_from_v6(const in6_addr& addr) {
    IpKey key;
    if (IN6_IS_ADDR_V4MAPPED(&addr)) {
        key.size = 4;
        std::memcpy(key.bytes.data(), addr.s6_addr + 12, 4);
    } else {
        key.size = 16;
        std::memcpy(key.bytes.data(), addr.s6_addr, 16);
    }
    return key;
}

}  // namespace

// inet_pton needs a NUL-terminated string; anything longer than the longest
// textual IPv6 address cannot be valid anyway. It would stop at a NUL inside the
// text and take "1.2.3.4\0junk" for 1.2.3.4, so only the characters an address is
// written with get that far (no NUL, no "%zone", no trailing bytes of any kind).
bool parse_ip_bytes(int family, std::string_view text, void* out) {
    char buf[INET6_ADDRSTRLEN];
    if (text.empty() || text.size() >= sizeof buf) return false;
    const bool address_characters = std::all_of(text.begin(), text.end(), [](char c) {
        return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
    });
    if (!address_characters) return false;
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    return inet_pton(family, buf, out) == 1;
}

std::optional<SocketAddress> SocketAddress::parse(std::string_view text) {
    SocketAddress out;
    if (!text.empty() && text.front() == '[') {
        const size_t close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            return std::nullopt;
        }
        auto port = parse_port(text.substr(close + 2));
        sockaddr_in6 sin6{};
        if (!port || !parse_ip_bytes(AF_INET6, text.substr(1, close - 1), &sin6.sin6_addr)) {
            return std::nullopt;
        }
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(*port);
        std::memcpy(&out.storage_, &sin6, sizeof sin6);
        out.len_ = sizeof sin6;
        return out;
    }

    // Unbracketed means IPv4: "::1:80" is ambiguous and therefore rejected here.
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    auto port = parse_port(text.substr(colon + 1));
    sockaddr_in sin{};
    if (!port || !parse_ip_bytes(AF_INET, text.substr(0, colon), &sin.sin_addr))
        return std::nullopt;
    sin.sin_family = AF_INET;
    sin.sin_port = htons(*port);
    std::memcpy(&out.storage_, &sin, sizeof sin);
    out.len_ = sizeof sin;
    return out;
}

SocketAddress SocketAddress::from_sockaddr(const sockaddr* sa, socklen_t len) {
    SocketAddress out;
    if (sa == nullptr) return out;
    const socklen_t n = std::min<socklen_t>(len, sizeof out.storage_);
    std::memcpy(&out.storage_, sa, n);
    out.len_ = n;
    return out;
}

uint16_t SocketAddress::port() const {
    switch (family()) {
        case AF_INET:
            return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
        case AF_INET6:
            return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
        default:
            return 0;
    }
}

std::string SocketAddress::to_string() const {
    char buf[INET6_ADDRSTRLEN];
    switch (family()) {
        case AF_INET: {
            auto* sin = reinterpret_cast<const sockaddr_in*>(&storage_);
            inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
            return std::string(buf) + ':' + std::to_string(port());
        }
        case AF_INET6: {
            auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
            inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
            return '[' + std::string(buf) + "]:" + std::to_string(port());
        }
        default:
            return "<unspecified>";
    }
}

bool operator==(const SocketAddress& a, const SocketAddress& b) {
    if (a.family() != b.family() || a.port() != b.port()) return false;
    switch (a.family()) {
        case AF_INET: {
            auto* x = reinterpret_cast<const sockaddr_in*>(&a.storage_);
            auto* y = reinterpret_cast<const sockaddr_in*>(&b.storage_);
            return x->sin_addr.s_addr == y->sin_addr.s_addr;
        }
        case AF_INET6: {
            auto* x = reinterpret_cast<const sockaddr_in6*>(&a.storage_);
            auto* y = reinterpret_cast<const sockaddr_in6*>(&b.storage_);
            return std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
        }
        default:
            // Unknown families carry no address we understand; compare the raw bytes.
            return a.len_ == b.len_ && std::memcmp(&a.storage_, &b.storage_, a.len_) == 0;
    }
}

IpKey ip_key_of(const sockaddr* sa) {
    if (sa == nullptr) return {};
    switch (sa->sa_family) {
        case AF_INET:
            return key_from_v4(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
        case AF_INET6:
            return key_from_v6(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
        default:
            return {};
    }
}

std::optional<IpKey> parse_ip(std::string_view text) {
    in_addr v4{};
    if (parse_ip_bytes(AF_INET, text, &v4)) return key_from_v4(v4);
    in6_addr v6{};
    if (parse_ip_bytes(AF_INET6, text, &v6)) return key_from_v6(v6);
    return std::nullopt;
}

IpKey apply_prefix(IpKey key, unsigned prefix_v4, unsigned prefix_v6) {
    const unsigned bits = std::min<unsigned>(key.size == 4 ? prefix_v4 : prefix_v6, key.size * 8u);
    for (unsigned i = 0; i < key.bytes.size(); ++i) {
        const unsigned first_bit = i * 8;
        if (first_bit >= bits) {
            key.bytes[i] = 0;
        } else if (bits - first_bit < 8) {
            key.bytes[i] &= static_cast<uint8_t>(0xff00u >> (bits - first_bit));
        }
    }
    return key;
}

int ip_version(const SocketAddress& address) {
    switch (address.family()) {
        case AF_INET:
            return 4;
        case AF_INET6:
            return ip_key_of(address.sa()).size == 4 ? 4 : 6;
        default:
            return 0;
    }
}

std::optional<SocketAddress> transparent_source(const SocketAddress& client,
                                                const SocketAddress& target) {
    const IpKey ip = ip_key_of(client.sa());
    const int version = ip_version(target);
    if (version == 0 || ip.size != (version == 4 ? 4 : 16)) return std::nullopt;
    if (target.family() == AF_INET) {
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        std::memcpy(&sin.sin_addr, ip.bytes.data(), 4);
        return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof sin);
    }
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    if (ip.size == 4) {
        sin6.sin6_addr.s6_addr[10] = 0xff;
        sin6.sin6_addr.s6_addr[11] = 0xff;
        std::memcpy(sin6.sin6_addr.s6_addr + 12, ip.bytes.data(), 4);
    } else {
        std::memcpy(sin6.sin6_addr.s6_addr, ip.bytes.data(), 16);
        // A link-local client is only reachable through the interface it came in on.
        if (client.family() == AF_INET6) {
            sin6.sin6_scope_id = reinterpret_cast<const sockaddr_in6*>(client.sa())->sin6_scope_id;
        }
    }
    return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin6), sizeof sin6);
}

std::string to_string(const IpKey& key) {
    char buf[INET6_ADDRSTRLEN];
    if (key.size == 4) return inet_ntop(AF_INET, key.bytes.data(), buf, sizeof buf);
    if (key.size == 16) return inet_ntop(AF_INET6, key.bytes.data(), buf, sizeof buf);
    return {};
}

}  // namespace stickyd
