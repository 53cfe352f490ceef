// HAProxy PROXY protocol (proxy-protocol.txt): a v2 encoder for what stickyd sends
// to targets, and a strict v1/v2 parser for whatever has to read such a header
// (tests, the echo backend, fuzzing). Pure: no I/O, no allocation in the encoder.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "stickyd/address.hpp"

namespace stickyd::proxy {

// The 12 bytes every v2 header starts with; chosen by the spec so that it can never
// be the start of a v1 line or of any common protocol.
inline constexpr std::array<uint8_t, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
inline constexpr size_t kV2FixedSize = 16;  // signature, ver/cmd, family/proto, length
// The largest header the encoder produces: fixed part + the INET6 address block
// (2 x 16 address bytes + 2 x 2 port bytes). The encoder sends no TLVs.
inline constexpr size_t kV2MaxEncodedSize = kV2FixedSize + 36;
// The spec's limit for a v1 line, "PROXY TCP6 <max> <max> 65535 65535\r\n".
inline constexpr size_t kV1MaxLine = 107;

// An encoded v2 header in a fixed buffer, so the connect path never allocates.
struct EncodedHeader {
    std::array<uint8_t, kV2MaxEncodedSize> bytes{};
    uint8_t size = 0;

    std::span<const uint8_t> view() const { return {bytes.data(), size}; }
};

// PROXY command, TCP. Both addresses IPv4 or IPv4-mapped IPv6 -> sent as INET (0x11),
// so targets see the same "1.2.3.4" that stickiness hashed. Otherwise, if both are
// IPv4/IPv6, -> INET6 (0x21) with any IPv4 side written as ::ffff:a.b.c.d, because
// one header carries one family. Anything else (e.g. an empty SocketAddress) ->
// UNSPEC (0x00) with no address block: the spec tells the receiver to fall back to
// the connection's real endpoints, which is the only honest thing to say.
EncodedHeader encode_v2_proxy(const SocketAddress& client, const SocketAddress& local);

// The 16-byte LOCAL header: "this connection is from the proxy itself" (health
// checks), as the AWS NLB sends when proxy_protocol_v2 is on.
EncodedHeader encode_v2_local();

enum class Command : uint8_t {
    local,  // v2 LOCAL: use the connection's real endpoints
    proxy,  // v2 PROXY, and every v1 line (v1 has no LOCAL)
};

struct ProxyHeader {
    size_t consumed = 0;  // bytes of the header, TLVs included; payload starts here
    int version = 0;      // 1 or 2
    Command command = Command::proxy;
    // Present only for TCP over IPv4/IPv6 with the PROXY command. Absent for LOCAL,
    // v1 UNKNOWN, v2 UNSPEC, AF_UNIX and UDP: the spec says the receiver then uses
    // the connection's real addresses (a TCP relay has no use for UDP/UNIX ones).
    std::optional<SocketAddress> source;
    std::optional<SocketAddress> destination;
};

enum class ParseStatus : uint8_t { incomplete, invalid, ok };

struct ParseResult {
    ParseStatus status = ParseStatus::incomplete;
    // incomplete: a lower bound on the total bytes needed (> data.size()); exact once
    // a v2 length field has been read, otherwise "at least one more".
    size_t needed = 0;
    std::string reason;  // invalid: a short human reason, e.g. "bad v2 signature"
    ProxyHeader header;  // ok only
};

// Parses a v1 or v2 header at the start of `data`. Never reads past data.size() and
// trusts no length field: a prefix of a valid header is always `incomplete`, never
// `invalid`; anything that cannot become valid by appending bytes is `invalid`.
ParseResult parse_proxy_header(std::span<const uint8_t> data);

}  // namespace stickyd::proxy
