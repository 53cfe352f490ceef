// libFuzzer target for the PROXY protocol parser and encoder (scripts/fuzz runs it
// under ASan+UBSan). Memory safety is checked by the sanitizers; the properties the
// parser promises are checked here, and a violation aborts with a message.
#include <arpa/inet.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "stickyd/proxy_protocol.hpp"

using namespace stickyd;
using namespace stickyd::proxy;

namespace {

void require(bool condition, const char* what) {
    if (condition) return;
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
}

// Parses an exact-size heap copy so ASan sees any read past the end.
ParseResult parse_copy(std::span<const uint8_t> data) {
    const std::vector<uint8_t> copy(data.begin(), data.end());
    return parse_proxy_header(copy);
}

// An accepted TCP4/TCP6 line is made of what its fields are written with and
// nothing else: a NUL or "%zone" inside an address must not be cut off unnoticed.
void check_v1_characters(std::span<const uint8_t> line) {
    const std::string_view text(reinterpret_cast<const char*>(line.data()), line.size() - 2);
    if (text.starts_with("PROXY UNKNOWN")) return;  // the spec ignores the rest
    for (char c : text.substr(11)) {
        const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                        (c >= 'A' && c <= 'F') || c == ':' || c == '.' || c == ' ';
        require(ok, "an accepted v1 line holds only addresses, ports and spaces");
    }
}

void check_parser(std::span<const uint8_t> data) {
    const ParseResult r = parse_copy(data);
    switch (r.status) {
        case ParseStatus::incomplete:
            require(r.needed > data.size(), "incomplete asks for more than it has");
            break;
        case ParseStatus::invalid:
            require(!r.reason.empty(), "invalid carries a reason");
            break;
        case ParseStatus::ok: {
            const ProxyHeader& h = r.header;
            require(h.consumed > 0 && h.consumed <= data.size(), "consumed within the data");
            require(h.version == 1 || h.version == 2, "version is 1 or 2");
            require(h.version == 2 || h.consumed <= kV1MaxLine, "v1 line within 107 bytes");
            if (h.version == 1) check_v1_characters(data.first(h.consumed));
            require(h.source.has_value() == h.destination.has_value(), "addresses come in pairs");
            // The header alone parses the same: the payload never influences it...
            const ParseResult alone = parse_copy(data.first(h.consumed));
            require(alone.status == ParseStatus::ok && alone.header.consumed == h.consumed,
                    "header parses the same without its payload");
            // ...and one byte less of it is incomplete, never invalid.
            require(parse_copy(data.first(h.consumed - 1)).status == ParseStatus::incomplete,
                    "a strict prefix of a header is incomplete");
            // Addresses survive a v2 re-encode (mapped ones normalised by both sides).
            if (h.source) {
                const EncodedHeader enc = encode_v2_proxy(*h.source, *h.destination);
                const ParseResult again = parse_copy(enc.view());
                require(again.status == ParseStatus::ok && again.header.source &&
                            again.header.source->port() == h.source->port() &&
                            again.header.destination->port() == h.destination->port(),
                        "parsed addresses re-encode and parse back");
            }
            break;
        }
    }
}

// Builds addresses straight from fuzz bytes and checks encode -> parse round trips.
void check_encoder(std::span<const uint8_t> data) {
    if (data.size() < 2 + 2 * 18) return;
    auto make = [&](size_t off) {
        const uint8_t* p = data.data() + off;
        if (p[0] & 1) {
            sockaddr_in sin{};
            sin.sin_family = AF_INET;
            std::memcpy(&sin.sin_port, p + 1, 2);
            std::memcpy(&sin.sin_addr, p + 3, 4);
            return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin), sizeof sin);
        }
        sockaddr_in6 sin6{};
        sin6.sin6_family = AF_INET6;
        std::memcpy(&sin6.sin6_port, p + 1, 2);
        std::memcpy(&sin6.sin6_addr, p + 3, 16);
        return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
    };
    const SocketAddress client = make(0);
    const SocketAddress local = make(19);
    const EncodedHeader enc = encode_v2_proxy(client, local);
    require(enc.size <= kV2MaxEncodedSize, "encoded size within the fixed buffer");
    const ParseResult r = parse_copy(enc.view());
    require(r.status == ParseStatus::ok && r.header.consumed == enc.size, "encoded header parses");
    require(r.header.source && r.header.destination, "encoded addresses come back");
    require(ip_key_of(r.header.source->sa()) == ip_key_of(client.sa()) &&
                r.header.source->port() == client.port(),
            "client survives the round trip");
    require(ip_key_of(r.header.destination->sa()) == ip_key_of(local.sa()) &&
                r.header.destination->port() == local.port(),
            "local survives the round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::span<const uint8_t> input(data, size);
    check_parser(input);
    check_encoder(input);
    return 0;
}
