#include "stickyd/proxy_protocol.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <string_view>

namespace stickyd::proxy {
namespace {

// Byte 13 of a v2 header: address family (high nibble) and transport (low nibble).
enum Family : uint8_t { kUnspec = 0x0, kInet = 0x1, kInet6 = 0x2, kUnix = 0x3 };
enum Transport : uint8_t { kStream = 0x1, kDgram = 0x2 };
constexpr uint8_t kVersion2 = 0x20;
constexpr uint8_t kCmdLocal = 0x0;
constexpr uint8_t kCmdProxy = 0x1;

// Address block sizes by family, from the spec's proxy_addr union.
constexpr size_t kInetBlock = 4 + 4 + 2 + 2;
constexpr size_t kInet6Block = 16 + 16 + 2 + 2;
constexpr size_t kUnixBlock = 108 + 108;

constexpr std::string_view kV1Preamble = "PROXY ";

// ---------------------------------------------------------------- encoder

// One side of the connection reduced to what the header carries.
struct Endpoint {
    std::array<uint8_t, 16> ip{};  // IPv4 in the first 4 bytes when v4
    bool v4 = false;
    uint16_t port = 0;
};

std::optional<Endpoint> endpoint_of(const SocketAddress& addr) {
    Endpoint out;
    out.port = addr.port();
    if (addr.family() == AF_INET) {
        out.v4 = true;
        std::memcpy(out.ip.data(), &reinterpret_cast<const sockaddr_in*>(addr.sa())->sin_addr, 4);
        return out;
    }
    if (addr.family() == AF_INET6) {
        const in6_addr& a6 = reinterpret_cast<const sockaddr_in6*>(addr.sa())->sin6_addr;
        // Mapped addresses are IPv4 clients on a dual-stack socket: report them as the
        // IPv4 address stickiness hashed, not as an IPv6 one the target must unwrap.
        out.v4 = IN6_IS_ADDR_V4MAPPED(&a6);
        if (out.v4) {
            std::memcpy(out.ip.data(), a6.s6_addr + 12, 4);
        } else {
            std::memcpy(out.ip.data(), a6.s6_addr, 16);
        }
        return out;
    }
    return std::nullopt;
}

class Writer {
  public:
    explicit Writer(EncodedHeader& out) : out_(out) {}
    void bytes(const uint8_t* p, size_t n) {
        std::memcpy(out_.bytes.data() + out_.size, p, n);
        out_.size = static_cast<uint8_t>(out_.size + n);
    }
    void byte(uint8_t b) { bytes(&b, 1); }
    void be16(uint16_t v) {
        byte(static_cast<uint8_t>(v >> 8));
        byte(static_cast<uint8_t>(v & 0xff));
    }
    void ip6(const Endpoint& e) {
        if (!e.v4) return bytes(e.ip.data(), 16);
        static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        bytes(kMappedPrefix, sizeof kMappedPrefix);
        bytes(e.ip.data(), 4);
    }

  private:
    EncodedHeader& out_;
};

EncodedHeader encode_fixed(uint8_t command, uint8_t family_proto, uint16_t length) {
    EncodedHeader out;
    Writer w(out);
    w.bytes(kV2Signature.data(), kV2Signature.size());
    w.byte(kVersion2 | command);
    w.byte(family_proto);
    w.be16(length);
    return out;
}

// ---------------------------------------------------------------- parser helpers

ParseResult incomplete(size_t needed) {
    ParseResult r;
    r.status = ParseStatus::incomplete;
    r.needed = needed;
    return r;
}

ParseResult invalid(std::string reason) {
    ParseResult r;
    r.status = ParseStatus::invalid;
    r.reason = std::move(reason);
    return r;
}

ParseResult ok(ProxyHeader header) {
    ParseResult r;
    r.status = ParseStatus::ok;
    r.header = std::move(header);
    return r;
}

std::string hex(unsigned v) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string s = "0x";
    if (v >= 16) s += kDigits[(v >> 4) & 0xf];
    s += kDigits[v & 0xf];
    return s;
}

uint16_t load_be16(const uint8_t* p) {
    return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

SocketAddress make_v4(const uint8_t* ip, uint16_t port) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    std::memcpy(&sin.sin_addr, ip, 4);
    return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof sin);
}

SocketAddress make_v6(const uint8_t* ip, uint16_t port) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    std::memcpy(&sin6.sin6_addr, ip, 16);
    return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin6), sizeof sin6);
}

// ---------------------------------------------------------------- v1

// The spec: decimal 0-65535; we also refuse leading zeros and signs so that one
// port has exactly one spelling (a sender emitting "080" is broken).
std::optional<uint16_t> v1_port(std::string_view text) {
    if (text.empty() || text.size() > 5) return std::nullopt;
    if (text.size() > 1 && text[0] == '0') return std::nullopt;
    uint32_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return std::nullopt;
        value = value * 10 + static_cast<uint32_t>(c - '0');
    }
    if (value > 65535) return std::nullopt;
    return static_cast<uint16_t>(value);
}

// `body` is the line without "PROXY " and without CRLF.
ParseResult parse_v1_body(std::string_view body, size_t consumed) {
    ProxyHeader h;
    h.consumed = consumed;
    h.version = 1;
    h.command = Command::proxy;

    // "PROXY UNKNOWN" may be followed by anything; the spec says to ignore it.
    if (body == "UNKNOWN" || body.starts_with("UNKNOWN ")) return ok(std::move(h));

    std::string_view fields[5];
    size_t count = 0;
    while (true) {
        const size_t space = body.find(' ');
        const std::string_view field = body.substr(0, space);
        if (field.empty()) return invalid("v1 fields must be separated by single spaces");
        if (count == 5) return invalid("v1 line has too many fields");
        fields[count++] = field;
        if (space == std::string_view::npos) break;
        body.remove_prefix(space + 1);
    }

    const bool tcp4 = fields[0] == "TCP4";
    if (!tcp4 && fields[0] != "TCP6") {
        return invalid("unknown v1 protocol \"" + std::string(fields[0]) + '"');
    }
    if (count != 5) return invalid("v1 line needs source, destination and two ports");

    const int family = tcp4 ? AF_INET : AF_INET6;
    uint8_t src[16];
    uint8_t dst[16];
    if (!parse_ip_bytes(family, fields[1], src)) return invalid("bad v1 source address");
    if (!parse_ip_bytes(family, fields[2], dst)) return invalid("bad v1 destination address");
    const auto sport = v1_port(fields[3]);
    const auto dport = v1_port(fields[4]);
    if (!sport) return invalid("bad v1 source port");
    if (!dport) return invalid("bad v1 destination port");

    h.source = tcp4 ? make_v4(src, *sport) : make_v6(src, *sport);
    h.destination = tcp4 ? make_v4(dst, *dport) : make_v6(dst, *dport);
    return ok(std::move(h));
}

ParseResult parse_v1(std::span<const uint8_t> data) {
    const size_t preamble = std::min(data.size(), kV1Preamble.size());
    if (std::memcmp(data.data(), kV1Preamble.data(), preamble) != 0) {
        return invalid("not a PROXY header");
    }
    // The CR may sit at index 105 at most (CR + LF = 107 bytes). Scanning no further
    // rejects an endless line as soon as it is too long, not when memory runs out.
    const size_t limit = std::min(data.size(), kV1MaxLine - 1);
    for (size_t i = 0; i < limit; ++i) {
        if (data[i] == '\n') return invalid("v1 line must end with CRLF");
        if (data[i] != '\r') continue;
        if (i + 1 == data.size()) return incomplete(i + 2);
        if (data[i + 1] != '\n') return invalid("v1 line must end with CRLF");
        const std::string_view line(reinterpret_cast<const char*>(data.data()), i);
        return parse_v1_body(line.substr(kV1Preamble.size()), i + 2);
    }
    if (data.size() >= kV1MaxLine - 1) {
        return invalid("v1 line longer than " + std::to_string(kV1MaxLine) + " bytes");
    }
    return incomplete(data.size() + 1);
}

// ---------------------------------------------------------------- v2

struct AddressBlock {
    size_t size = 0;
    const char* name = "UNSPEC";
};

AddressBlock address_block(uint8_t family) {
    switch (family) {
        case kInet:
            return {kInetBlock, "INET"};
        case kInet6:
            return {kInet6Block, "INET6"};
        case kUnix:
            return {kUnixBlock, "UNIX"};
        default:
            return {};
    }
}

// TLVs are skipped, but each must fit in what the length field declared: a sender
// that gets this wrong would otherwise have its TLV bytes read as payload.
std::optional<std::string> tlv_problem(std::span<const uint8_t> tlvs) {
    while (!tlvs.empty()) {
        if (tlvs.size() < 3) return "truncated v2 TLV header";
        const size_t len = load_be16(tlvs.data() + 1);
        if (tlvs.size() - 3 < len) return "v2 TLV overruns the header";
        tlvs = tlvs.subspan(3 + len);
    }
    return std::nullopt;
}

ParseResult parse_v2(std::span<const uint8_t> data) {
    const size_t sig = std::min(data.size(), kV2Signature.size());
    if (std::memcmp(data.data(), kV2Signature.data(), sig) != 0) return invalid("bad v2 signature");

    // Reject bad bytes as soon as they arrive rather than waiting for the length.
    if (data.size() > 12) {
        const unsigned version = data[12] >> 4;
        const unsigned command = data[12] & 0xf;
        if (version != 2) return invalid("unsupported v2 version " + hex(version));
        if (command != kCmdLocal && command != kCmdProxy) {
            return invalid("unknown v2 command " + hex(command));
        }
    }
    const bool is_local = data.size() > 12 && (data[12] & 0xf) == kCmdLocal;
    // LOCAL: the spec says to discard the protocol block, family byte included.
    if (data.size() > 13 && !is_local) {
        const unsigned family = data[13] >> 4;
        const unsigned transport = data[13] & 0xf;
        if (family > kUnix) return invalid("unknown v2 address family " + hex(family));
        if (transport > kDgram) return invalid("unknown v2 transport " + hex(transport));
    }
    if (data.size() < kV2FixedSize) return incomplete(kV2FixedSize);

    const size_t length = load_be16(data.data() + 14);
    const size_t total = kV2FixedSize + length;
    const uint8_t family = data[13] >> 4;
    const uint8_t transport = data[13] & 0xf;

    // LOCAL and UNSPEC have no address block to check.
    const AddressBlock block = is_local ? AddressBlock{} : address_block(family);
    // Decidable from the length field alone, so say so before waiting for the body.
    if (length < block.size) {
        return invalid("address length " + std::to_string(length) + " too short for " + block.name);
    }
    if (data.size() < total) return incomplete(total);

    ProxyHeader h;
    h.consumed = total;
    h.version = 2;
    h.command = is_local ? Command::local : Command::proxy;
    if (is_local || family == kUnspec) return ok(std::move(h));

    const uint8_t* addr = data.data() + kV2FixedSize;
    if (auto error = tlv_problem(data.subspan(kV2FixedSize + block.size, length - block.size))) {
        return invalid(std::move(*error));
    }
    if (transport != kStream) return ok(std::move(h));  // UDP/UNSPEC: nothing for TCP
    if (family == kInet) {
        h.source = make_v4(addr, load_be16(addr + 8));
        h.destination = make_v4(addr + 4, load_be16(addr + 10));
    } else if (family == kInet6) {
        h.source = make_v6(addr, load_be16(addr + 32));
        h.destination = make_v6(addr + 16, load_be16(addr + 34));
    }
    return ok(std::move(h));  // AF_UNIX: the receiver uses the real endpoints
}

}  // namespace

EncodedHeader encode_v2_proxy(const SocketAddress& client, const SocketAddress& local) {
    const auto src = endpoint_of(client);
    const auto dst = endpoint_of(local);
    if (!src || !dst) return encode_fixed(kCmdProxy, kUnspec << 4, 0);

    if (src->v4 && dst->v4) {
        EncodedHeader out = encode_fixed(kCmdProxy, (kInet << 4) | kStream, kInetBlock);
        Writer w(out);
        w.bytes(src->ip.data(), 4);
        w.bytes(dst->ip.data(), 4);
        w.be16(src->port);
        w.be16(dst->port);
        return out;
    }
    EncodedHeader out = encode_fixed(kCmdProxy, (kInet6 << 4) | kStream, kInet6Block);
    Writer w(out);
    w.ip6(*src);
    w.ip6(*dst);
    w.be16(src->port);
    w.be16(dst->port);
    return out;
}

EncodedHeader encode_v2_local() {
    return encode_fixed(kCmdLocal, kUnspec << 4, 0);
}

ParseResult parse_proxy_header(std::span<const uint8_t> data) {
    // Empty input is a prefix of both versions; one byte decides which one it is.
    if (data.empty()) return incomplete(1);
    if (data[0] == kV2Signature[0]) return parse_v2(data);
    return parse_v1(data);
}

}  // namespace stickyd::proxy
