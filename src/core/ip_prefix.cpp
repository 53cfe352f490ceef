#include "stickyd/ip_prefix.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace stickyd {
namespace {

constexpr std::string_view kExpected =
    "expected a CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare address";

// Decimal, digits only, no leading zero: "08" or "+8" is a typo, not a length.
std::variant<unsigned, std::string> parse_length(std::string_view text, unsigned max_length) {
    if (text.empty()) return std::string("missing prefix length after '/'");
    const bool digits =
        std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || text.size() > 3 || (text.size() > 1 && text.front() == '0')) {
        return fmt::format("prefix length {:?} is not a number from 0 to {}", text, max_length);
    }
    unsigned value = 0;
    for (char c : text) value = value * 10 + static_cast<unsigned>(c - '0');
    return value;
}

IpPrefix masked(IpPrefix prefix) {
    prefix.address = apply_prefix(prefix.address, prefix.length, prefix.length);
    return prefix;
}

}  // namespace

bool IpPrefix::contains(const IpKey& client) const {
    if (client.size != address.size) return false;
    return apply_prefix(client, length, length) == address;
}

std::variant<IpPrefix, std::string> parse_prefix(std::string_view text) {
    if (text.empty()) return fmt::format("empty; {}", kExpected);
    const size_t slash = text.find('/');
    const std::string_view host = text.substr(0, slash);

    IpPrefix prefix;
    in_addr v4{};
    in6_addr v6{};
    unsigned max_length = 0;
    if (parse_ip_bytes(AF_INET, host, &v4)) {
        prefix.address.size = 4;
        std::memcpy(prefix.address.bytes.data(), &v4, 4);
        max_length = 32;
    } else if (parse_ip_bytes(AF_INET6, host, &v6)) {
        prefix.address.size = 16;
        std::memcpy(prefix.address.bytes.data(), &v6, 16);
        max_length = 128;
    } else if (slash == std::string_view::npos) {
        return fmt::format("not an IPv4 or IPv6 address; {}", kExpected);
    } else {
        return fmt::format("{:?} is not an IPv4 or IPv6 address; {}", host, kExpected);
    }

    unsigned length = max_length;
    if (slash != std::string_view::npos) {
        auto parsed = parse_length(text.substr(slash + 1), max_length);
        if (auto* problem = std::get_if<std::string>(&parsed)) return std::move(*problem);
        length = std::get<unsigned>(parsed);
        if (length > max_length) {
            return fmt::format("prefix length {} is out of range 0-{} for an IPv{} address", length,
                               max_length, max_length == 32 ? 4 : 6);
        }
    }
    prefix.length = static_cast<uint8_t>(length);

    // Clients arrive v4-mapped on a dual-stack listener and are matched as IPv4.
    if (prefix.address.size == 16 && IN6_IS_ADDR_V4MAPPED(&v6) && length >= 96) {
        IpKey v4_key;
        v4_key.size = 4;
        std::memcpy(v4_key.bytes.data(), v6.s6_addr + 12, 4);
        prefix.address = v4_key;
        prefix.length = static_cast<uint8_t>(length - 96);
    }

    const IpPrefix network = masked(prefix);
    if (!(network == prefix)) {
        return fmt::format("host bits are set; did you mean {}?", to_string(network));
    }
    return prefix;
}

std::string to_string(const IpPrefix& prefix) {
    return fmt::format("{}/{}", to_string(prefix.address), prefix.length);
}

}  // namespace stickyd
