// CIDR prefixes of client addresses, as allow and deny lists are written:
// "10.0.0.0/8", "2001:db8::/32", or a bare address meaning that one host.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "stickyd/address.hpp"

namespace stickyd {

// Normalised as client addresses are (ip_key_of): an IPv4-mapped IPv6 prefix of
// /96 or longer is the IPv4 prefix it maps, so "::ffff:10.0.0.0/104" and
// "10.0.0.0/8" are the same prefix and both match a v4-mapped client.
struct IpPrefix {
    IpKey address;       // host bits zero
    uint8_t length = 0;  // 0-32 for IPv4, 0-128 for IPv6

    // A client of the other family is never inside: 0.0.0.0/0 is every IPv4
    // client, ::/0 every IPv6 one.
    bool contains(const IpKey& client) const;

    friend bool operator==(const IpPrefix&, const IpPrefix&) = default;
};

// Strict, for people: the prefix, or one phrase saying what is wrong without
// repeating the text (callers put it in front: the flag, or the quoted value),
// e.g. "host bits are set; did you mean 10.0.0.0/8?" for "10.0.0.1/8". Host bits
// are refused rather than masked: "10.0.0.1/8" is more likely a typo for
// 10.0.0.1/32 than a wish for all of 10/8, and allowing 16 million addresses by
// mistake is the costly guess.
std::variant<IpPrefix, std::string> parse_prefix(std::string_view text);

// "10.0.0.0/8", "2001:db8::/32"; parse_prefix(to_string(p)) == p.
std::string to_string(const IpPrefix& prefix);

}  // namespace stickyd
