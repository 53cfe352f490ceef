#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "stickyd/proxy_protocol.hpp"

using namespace stickyd;
using namespace stickyd::proxy;

namespace {

using Bytes = std::vector<uint8_t>;

SocketAddress addr(const char* text) {
    auto a = SocketAddress::parse(text);
    REQUIRE(a.has_value());
    return *a;
}

Bytes bytes_of(std::string_view text) {
    return Bytes(text.begin(), text.end());
}

Bytes bytes_of(const EncodedHeader& h) {
    return Bytes(h.view().begin(), h.view().end());
}

Bytes concat(Bytes a, const Bytes& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

Bytes signature() {
    return Bytes(kV2Signature.begin(), kV2Signature.end());
}

// A v2 header with the given ver/cmd and family/proto bytes and `body` as everything
// after the length field; `length` defaults to the body's real size.
Bytes v2(uint8_t ver_cmd, uint8_t fam, const Bytes& body, int length = -1) {
    const auto len = static_cast<uint16_t>(length < 0 ? body.size() : length);
    Bytes out = signature();
    out.insert(out.end(),
               {ver_cmd, fam, static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len & 0xff)});
    return concat(out, body);
}

// The INET address block of the golden vectors: 192.0.2.1:51000 -> 198.51.100.7:443.
const Bytes kInetBlock = {0xC0, 0x00, 0x02, 0x01, 0xC6, 0x33, 0x64, 0x07, 0xC7, 0x38, 0x01, 0xBB};

// Parses an exact-size copy, so a sanitizer build catches any read past the end.
ParseResult parse(const Bytes& data) {
    const Bytes copy(data);
    return parse_proxy_header(copy);
}

ParseResult parse(std::string_view text) {
    return parse(bytes_of(text));
}

void check_ok(const ParseResult& r, size_t consumed) {
    INFO("reason: " << r.reason);
    REQUIRE(r.status == ParseStatus::ok);
    CHECK(r.header.consumed == consumed);
}

void check_invalid(const ParseResult& r, std::string_view reason = {}) {
    REQUIRE(r.status == ParseStatus::invalid);
    CHECK(!r.reason.empty());
    if (!reason.empty()) CHECK(r.reason == reason);
}

// Every strict prefix of a valid header must ask for more, never reject.
void check_every_prefix_incomplete(const Bytes& header) {
    for (size_t n = 0; n < header.size(); ++n) {
        const ParseResult r = parse(Bytes(header.begin(), header.begin() + n));
        INFO("prefix length " << n << ", reason: " << r.reason);
        REQUIRE(r.status == ParseStatus::incomplete);
        CHECK(r.needed > n);
        CHECK(r.needed <= header.size());
    }
}

}  // namespace

TEST_CASE("encode_v2_proxy golden bytes: IPv4") {
    const Bytes expected = concat(concat(signature(), {0x21, 0x11, 0x00, 0x0C}), kInetBlock);
    CHECK(bytes_of(encode_v2_proxy(addr("192.0.2.1:51000"), addr("198.51.100.7:443"))) == expected);
}

TEST_CASE("encode_v2_proxy golden bytes: IPv4-mapped IPv6 is sent as IPv4") {
    const Bytes expected = concat(concat(signature(), {0x21, 0x11, 0x00, 0x0C}), kInetBlock);
    CHECK(bytes_of(encode_v2_proxy(addr("[::ffff:192.0.2.1]:51000"),
                                   addr("[::ffff:198.51.100.7]:443"))) == expected);
    // One side mapped, the other plain IPv4: still both IPv4.
    CHECK(bytes_of(encode_v2_proxy(addr("[::ffff:192.0.2.1]:51000"), addr("198.51.100.7:443"))) ==
          expected);
    CHECK(bytes_of(encode_v2_proxy(addr("192.0.2.1:51000"), addr("[::ffff:198.51.100.7]:443"))) ==
          expected);
}

// The IPv6 golden vectors: [2001:db8::1]:51000 -> [2001:db8::2]:443.
const Bytes kV6Client = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};
const Bytes kV6Local = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02};
const Bytes kMappedClient = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xC0, 0x00, 0x02, 0x01};
const Bytes kPorts = {0xC7, 0x38, 0x01, 0xBB};  // 51000, 443

TEST_CASE("encode_v2_proxy golden bytes: IPv6") {
    const Bytes expected = concat(
        concat(concat(concat(signature(), {0x21, 0x21, 0x00, 0x24}), kV6Client), kV6Local), kPorts);
    const EncodedHeader h = encode_v2_proxy(addr("[2001:db8::1]:51000"), addr("[2001:db8::2]:443"));
    CHECK(bytes_of(h) == expected);
    CHECK(h.size == kV2MaxEncodedSize);
}

TEST_CASE("encode_v2_proxy golden bytes: mixed families are both sent as IPv6") {
    const Bytes expected = concat(
        concat(concat(concat(signature(), {0x21, 0x21, 0x00, 0x24}), kMappedClient), kV6Local),
        kPorts);
    CHECK(bytes_of(encode_v2_proxy(addr("192.0.2.1:51000"), addr("[2001:db8::2]:443"))) ==
          expected);
    CHECK(bytes_of(encode_v2_proxy(addr("[::ffff:192.0.2.1]:51000"), addr("[2001:db8::2]:443"))) ==
          expected);
}

TEST_CASE("encode_v2_local golden bytes, and UNSPEC for addresses it cannot express") {
    CHECK(bytes_of(encode_v2_local()) == concat(signature(), {0x20, 0x00, 0x00, 0x00}));
    CHECK(bytes_of(encode_v2_proxy(SocketAddress{}, addr("198.51.100.7:443"))) ==
          concat(signature(), {0x21, 0x00, 0x00, 0x00}));
}

TEST_CASE("encode -> parse round trips, with payload following the header") {
    struct Case {
        const char* client;
        const char* local;
        const char* want_source;  // what the target sees after normalisation
        const char* want_destination;
    };
    const Case cases[] = {
        {"192.0.2.1:51000", "198.51.100.7:443", "192.0.2.1:51000", "198.51.100.7:443"},
        {"[::ffff:10.0.0.1]:1", "[::ffff:10.0.0.2]:65535", "10.0.0.1:1", "10.0.0.2:65535"},
        {"[2001:db8::1]:51000", "[2001:db8::2]:443", "[2001:db8::1]:51000", "[2001:db8::2]:443"},
        {"192.0.2.1:80", "[::1]:8080", "[::ffff:192.0.2.1]:80", "[::1]:8080"},
        {"[fe80::1]:2", "[::ffff:1.2.3.4]:3", "[fe80::1]:2", "[::ffff:1.2.3.4]:3"},
    };
    for (const Case& c : cases) {
        const std::string_view client = c.client;
        CAPTURE(client);
        const Bytes header = bytes_of(encode_v2_proxy(addr(c.client), addr(c.local)));
        const ParseResult r = parse(concat(header, bytes_of("GET / HTTP/1.0\r\n\r\n")));
        check_ok(r, header.size());
        CHECK(r.header.version == 2);
        CHECK(r.header.command == Command::proxy);
        REQUIRE(r.header.source.has_value());
        REQUIRE(r.header.destination.has_value());
        CHECK(r.header.source->to_string() == c.want_source);
        CHECK(r.header.destination->to_string() == c.want_destination);
        CHECK(*r.header.source == addr(c.want_source));
    }

    const ParseResult local = parse(bytes_of(encode_v2_local()));
    check_ok(local, kV2FixedSize);
    CHECK(local.header.command == Command::local);
    CHECK(!local.header.source.has_value());
    CHECK(!local.header.destination.has_value());
}

TEST_CASE("every prefix of a valid header is incomplete, never invalid") {
    const Bytes tlvs = {0x04, 0x00, 0x02, 0xAA, 0xBB, 0x01, 0x00, 0x00};
    const Bytes headers[] = {
        bytes_of(encode_v2_proxy(addr("192.0.2.1:51000"), addr("198.51.100.7:443"))),
        bytes_of(encode_v2_proxy(addr("[2001:db8::1]:51000"), addr("[2001:db8::2]:443"))),
        bytes_of(encode_v2_local()),
        v2(0x21, 0x11, concat(kInetBlock, tlvs)),
        v2(0x21, 0x31, Bytes(216, 0)),
        bytes_of("PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n"),
        bytes_of("PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n"),
        bytes_of("PROXY UNKNOWN\r\n"),
    };
    for (const Bytes& h : headers) {
        check_every_prefix_incomplete(h);
        check_ok(parse(h), h.size());
    }
}

TEST_CASE("a v2 length field is exact about how much more is needed") {
    const Bytes header = v2(0x21, 0x11, concat(kInetBlock, {0x04, 0x00, 0x01, 0x00}));
    const ParseResult r = parse(Bytes(header.begin(), header.begin() + 20));
    REQUIRE(r.status == ParseStatus::incomplete);
    CHECK(r.needed == header.size());

    // The largest length the field can hold, with none of the body present.
    const ParseResult big = parse(v2(0x21, 0x00, {}, 0xFFFF));
    REQUIRE(big.status == ParseStatus::incomplete);
    CHECK(big.needed == kV2FixedSize + 0xFFFF);
}

TEST_CASE("every single-byte corruption of the v2 signature is invalid") {
    const Bytes good = bytes_of(encode_v2_proxy(addr("192.0.2.1:1"), addr("192.0.2.2:2")));
    for (size_t i = 0; i < kV2Signature.size(); ++i) {
        for (unsigned v = 0; v < 256; ++v) {
            if (v == kV2Signature[i]) continue;
            Bytes bad = good;
            bad[i] = static_cast<uint8_t>(v);
            CAPTURE(i);
            CAPTURE(v);
            check_invalid(parse(bad));
            // Also as soon as the corrupted byte arrives, except for the one corruption
            // that turns the first byte into a v1 "P".
            const Bytes prefix(bad.begin(), bad.begin() + static_cast<long>(i) + 1);
            if (i == 0 && v == 'P') {
                CHECK(parse(prefix).status == ParseStatus::incomplete);
                continue;
            }
            check_invalid(parse(prefix));
        }
    }
}

TEST_CASE("v1 good lines") {
    struct Good {
        const char* line;
        const char* source;  // nullptr: no addresses (UNKNOWN)
        const char* destination;
    };
    const Good cases[] = {
        {"PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n", "192.0.2.1:51000", "198.51.100.7:443"},
        {"PROXY TCP4 255.255.255.255 0.0.0.0 65535 1\r\n", "255.255.255.255:65535", "0.0.0.0:1"},
        {"PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n", "[2001:db8::1]:51000",
         "[2001:db8::2]:443"},
        // Mapped addresses are kept as sent; ip_key_of() normalises them for hashing.
        {"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n", "[::ffff:192.0.2.1]:1", "[::1]:2"},
        {"PROXY UNKNOWN\r\n", nullptr, nullptr},
        {"PROXY UNKNOWN anything at all\r\n", nullptr, nullptr},
        // The spec's worst case: exactly 107 bytes.
        {"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
         nullptr, nullptr},
    };
    for (const Good& c : cases) {
        const std::string_view line = c.line;
        CAPTURE(line);
        const ParseResult r = parse(concat(bytes_of(line), bytes_of("payload")));
        check_ok(r, line.size());
        CHECK(r.header.version == 1);
        CHECK(r.header.command == Command::proxy);
        CHECK(r.header.source.has_value() == (c.source != nullptr));
        CHECK(r.header.destination.has_value() == (c.destination != nullptr));
        if (c.source != nullptr) {
            CHECK(r.header.source->to_string() == c.source);
            CHECK(r.header.destination->to_string() == c.destination);
        }
        check_every_prefix_incomplete(bytes_of(line));
    }
}

TEST_CASE("v1 port 0 is accepted (the spec allows 0-65535)") {
    const ParseResult r = parse("PROXY TCP4 192.0.2.1 198.51.100.7 0 0\r\n");
    check_ok(r, 39);
    CHECK(r.header.source->port() == 0);
    CHECK(r.header.destination->port() == 0);
}

TEST_CASE("v1 bad lines") {
    struct Bad {
        const char* line;
        const char* reason;
    };
    const Bad cases[] = {
        {"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
         "v1 fields must be separated by single spaces"},
        {"PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n",
         "v1 fields must be separated by single spaces"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1  2\r\n",
         "v1 fields must be separated by single spaces"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n",
         "v1 fields must be separated by single spaces"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n", "v1 line must end with CRLF"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX", "v1 line must end with CRLF"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\r\n", "v1 line must end with CRLF"},
        {"PROXY TCP4 192.0.2.256 198.51.100.7 1 2\r\n", "bad v1 source address"},
        {"PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n", "bad v1 source address"},
        {"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n", "bad v1 source address"},
        {"PROXY TCP4 192.0.2.1 example.com 1 2\r\n", "bad v1 destination address"},
        {"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n", "bad v1 source address"},
        {"PROXY TCP4 192.0.2.1 ::1 1 2\r\n", "bad v1 destination address"},
        {"PROXY TCP6 192.0.2.1 198.51.100.7 1 2\r\n", "bad v1 source address"},
        {"PROXY TCP6 [2001:db8::1] ::1 1 2\r\n", "bad v1 source address"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 65536 2\r\n", "bad v1 source port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 99999\r\n", "bad v1 destination port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 123456 2\r\n", "bad v1 source port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 080 2\r\n", "bad v1 source port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 00 2\r\n", "bad v1 source port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 +80 2\r\n", "bad v1 source port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 -1 2\r\n", "bad v1 source port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 0x50\r\n", "bad v1 destination port"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
         "v1 line needs source, destination and two ports"},
        {"PROXY TCP4\r\n", "v1 line needs source, destination and two ports"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n", "v1 line has too many fields"},
        {"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n", "unknown v1 protocol \"TCP5\""},
        {"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n", "unknown v1 protocol \"tcp4\""},
        {"PROXY UNKNOWNX\r\n", "unknown v1 protocol \"UNKNOWNX\""},
        {"PROXY \r\n", "v1 fields must be separated by single spaces"},
        {"PROXY\r\n", "not a PROXY header"},
        {"proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "not a PROXY header"},
        {"GET / HTTP/1.1\r\n", "not a PROXY header"},
        {"\r\nX", "bad v2 signature"},
    };
    for (const Bad& c : cases) {
        const std::string_view line = c.line;
        CAPTURE(line);
        check_invalid(parse(c.line), c.reason);
    }
}

TEST_CASE("v1 addresses with a NUL, a zone id or other trailing bytes are invalid") {
    // Regression: "PROXY TCP4 1.2.3.4\0 ..." was accepted with source 1.2.3.4, since
    // the address text went to inet_pton as a C string that ended at the NUL.
    using namespace std::string_view_literals;
    struct Bad {
        std::string_view line;
        const char* reason;
    };
    const Bad cases[] = {
        {"PROXY TCP4 1.2.3.4\0 198.51.100.7 1 2\r\n"sv, "bad v1 source address"},
        {"PROXY TCP4 1.2.3.4\0junk 198.51.100.7 1 2\r\n"sv, "bad v1 source address"},
        {"PROXY TCP4 1.2.3.4\0\0\0 198.51.100.7 1 2\r\n"sv, "bad v1 source address"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7\0 1 2\r\n"sv, "bad v1 destination address"},
        {"PROXY TCP6 2001:db8::1\0 ::1 1 2\r\n"sv, "bad v1 source address"},
        {"PROXY TCP6 ::1 ::1\0::2 1 2\r\n"sv, "bad v1 destination address"},
        {"PROXY TCP4 192.0.2.1 198.51.100.7 1\0 2\r\n"sv, "bad v1 source port"},
        {"PROXY TCP4 1.2.3.4%00 198.51.100.7 1 2\r\n"sv, "bad v1 source address"},
        {"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"sv, "bad v1 source address"},
        {"PROXY TCP6 ::1 fe80::1%1 1 2\r\n"sv, "bad v1 destination address"},
        {"PROXY TCP4 1.2.3.4/32 198.51.100.7 1 2\r\n"sv, "bad v1 source address"},
    };
    for (const Bad& c : cases) {
        CAPTURE(c.line);
        check_invalid(parse(c.line), c.reason);
    }
}

TEST_CASE("v1 line length limit is 107 bytes including CRLF") {
    // 105 bytes without CRLF: the CR may still come at index 105.
    CHECK(parse("PROXY UNKNOWN " + std::string(91, 'a')).status == ParseStatus::incomplete);
    // 106 bytes without CR: a CRLF can only end at 108 now.
    check_invalid(parse("PROXY UNKNOWN " + std::string(92, 'a')), "v1 line longer than 107 bytes");
    check_invalid(parse("PROXY UNKNOWN " + std::string(92, 'a') + "\r\n"),
                  "v1 line longer than 107 bytes");
    check_ok(parse("PROXY UNKNOWN " + std::string(91, 'a') + "\r\n"), 107);
    // 106 bytes ending in CR: only the LF is missing.
    const ParseResult r = parse("PROXY UNKNOWN " + std::string(91, 'a') + "\r");
    REQUIRE(r.status == ParseStatus::incomplete);
    CHECK(r.needed == 107);
    check_invalid(parse("PROXY " + std::string(4096, 'A')), "v1 line longer than 107 bytes");
}

TEST_CASE("v2 with TLVs after the addresses") {
    const Bytes tlvs = {
        0x04, 0x00, 0x03, 'a', 'b', 'c',  // PP2_TYPE_NOOP
        0x01, 0x00, 0x02, 'h', '2',       // PP2_TYPE_ALPN
        0x02, 0x00, 0x00,                 // PP2_TYPE_AUTHORITY, empty
    };
    const Bytes header = v2(0x21, 0x11, concat(kInetBlock, tlvs));
    const ParseResult r = parse(concat(header, bytes_of("payload")));
    check_ok(r, kV2FixedSize + kInetBlock.size() + tlvs.size());
    CHECK(r.header.source->to_string() == "192.0.2.1:51000");
    CHECK(r.header.destination->to_string() == "198.51.100.7:443");

    // A TLV whose value runs past the declared length.
    check_invalid(parse(v2(0x21, 0x11, concat(kInetBlock, {0x04, 0x00, 0x05, 'a', 'b'}))),
                  "v2 TLV overruns the header");
    // Leftover bytes too short to be a TLV header.
    check_invalid(parse(v2(0x21, 0x11, concat(kInetBlock, {0x04, 0x00}))),
                  "truncated v2 TLV header");
}

TEST_CASE("v2 length shorter than the address block is invalid without waiting for it") {
    check_invalid(parse(v2(0x21, 0x11, Bytes(4, 0))), "address length 4 too short for INET");
    check_invalid(parse(v2(0x21, 0x11, {}, 4)), "address length 4 too short for INET");
    check_invalid(parse(v2(0x21, 0x21, Bytes(12, 0))), "address length 12 too short for INET6");
    check_invalid(parse(v2(0x21, 0x31, Bytes(36, 0))), "address length 36 too short for UNIX");
    check_invalid(parse(v2(0x21, 0x12, {}, 11)), "address length 11 too short for INET");
}

TEST_CASE("v2 length longer than the data present is incomplete") {
    const Bytes header = v2(0x21, 0x11, kInetBlock, 40);
    const ParseResult r = parse(header);
    REQUIRE(r.status == ParseStatus::incomplete);
    CHECK(r.needed == kV2FixedSize + 40);
}

TEST_CASE("v2 bad version, command, family and transport bytes") {
    check_invalid(parse(v2(0x11, 0x11, kInetBlock)), "unsupported v2 version 0x1");
    check_invalid(parse(v2(0x31, 0x11, kInetBlock)), "unsupported v2 version 0x3");
    check_invalid(parse(v2(0x23, 0x11, kInetBlock)), "unknown v2 command 0x3");
    check_invalid(parse(v2(0x2F, 0x11, kInetBlock)), "unknown v2 command 0xf");
    check_invalid(parse(v2(0x21, 0x41, kInetBlock)), "unknown v2 address family 0x4");
    check_invalid(parse(v2(0x21, 0x13, kInetBlock)), "unknown v2 transport 0x3");
    // Rejected as soon as the byte arrives, before the length field.
    check_invalid(
        parse(Bytes{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x23}),
        "unknown v2 command 0x3");
}

TEST_CASE("v2 forms that are valid but carry no usable addresses") {
    struct Case {
        const char* name;
        Bytes header;
        Command command;
    };
    const Case cases[] = {
        {"UNSPEC", v2(0x21, 0x00, {}), Command::proxy},
        {"UNSPEC with TLV-ish bytes", v2(0x21, 0x00, {1, 2, 3, 4, 5}), Command::proxy},
        {"UDP over IPv4", v2(0x21, 0x12, kInetBlock), Command::proxy},
        {"UDP over IPv6", v2(0x21, 0x22, Bytes(36, 1)), Command::proxy},
        {"INET with UNSPEC transport", v2(0x21, 0x10, kInetBlock), Command::proxy},
        {"UNIX stream", v2(0x21, 0x31, Bytes(216, 'x')), Command::proxy},
        {"UNIX datagram", v2(0x21, 0x32, Bytes(216, 'x')), Command::proxy},
        // LOCAL discards the protocol block, whatever its family byte says.
        {"LOCAL with addresses", v2(0x20, 0x11, kInetBlock), Command::local},
        {"LOCAL with a junk family byte", v2(0x20, 0xFF, {9, 9, 9}), Command::local},
    };
    for (const Case& c : cases) {
        const std::string_view name = c.name;
        CAPTURE(name);
        const ParseResult r = parse(concat(c.header, bytes_of("x")));
        check_ok(r, c.header.size());
        CHECK(r.header.version == 2);
        CHECK(r.header.command == c.command);
        CHECK(!r.header.source.has_value());
        CHECK(!r.header.destination.has_value());
    }
}

TEST_CASE("input that is neither version is invalid from its first byte") {
    CHECK(parse(Bytes{}).status == ParseStatus::incomplete);
    CHECK(parse(Bytes{}).needed == 1);
    check_invalid(parse("G"), "not a PROXY header");
    check_invalid(parse(Bytes{0x16, 0x03, 0x01}), "not a PROXY header");  // a TLS ClientHello
    check_invalid(parse(Bytes{0x0D, 0x0A, 0x0D, 0x0B}), "bad v2 signature");
}
