// Golden vectors: these values are a compatibility promise. If one of these
// tests fails, the change remaps clients of every deployment; fix the code, not
// the numbers.
#include <doctest/doctest.h>
#include <xxhash.h>

#include "stickyd/hash.hpp"

using namespace stickyd;

namespace {

uint64_t ip_hash(const char* ip) {
    auto key = parse_ip(ip);
    REQUIRE(key.has_value());
    return hash_ip(*key);
}

}  // namespace

TEST_CASE("the linked xxHash is the XXH3 we pinned") {
    // Published XXH3-64 of the empty input, seed 0.
    CHECK(XXH3_64bits("", 0) == 0x2D06800538D394C2ull);
}

TEST_CASE("hash_ip golden vectors") {
    // IP                              hash_ip (XXH3-64 of 4 or 16 network-order bytes)
    // 0.0.0.0                         48b2c92616fc193d
    // 10.1.2.3                        b3d17992a3eb69bc
    // 192.0.2.1                       2c1c901eed9adc4a
    // 203.0.113.77                    9757eb3fdef9cace
    // 255.255.255.255                 cd6b1c920d3f662c
    // ::1                             4152418f75dd93bb
    // 2001:db8::1                     275c8fa58c2d19a0
    // 2001:db8:85a3::8a2e:370:7334    8367fd74106154c6
    // fe80::1                         2572ff1ae21fb1a7
    // ::ffff:10.1.2.3                 b3d17992a3eb69bc  (same as 10.1.2.3)
    CHECK(ip_hash("0.0.0.0") == 0x48b2c92616fc193dull);
    CHECK(ip_hash("10.1.2.3") == 0xb3d17992a3eb69bcull);
    CHECK(ip_hash("192.0.2.1") == 0x2c1c901eed9adc4aull);
    CHECK(ip_hash("203.0.113.77") == 0x9757eb3fdef9caceull);
    CHECK(ip_hash("255.255.255.255") == 0xcd6b1c920d3f662cull);
    CHECK(ip_hash("::1") == 0x4152418f75dd93bbull);
    CHECK(ip_hash("2001:db8::1") == 0x275c8fa58c2d19a0ull);
    CHECK(ip_hash("2001:db8:85a3::8a2e:370:7334") == 0x8367fd74106154c6ull);
    CHECK(ip_hash("fe80::1") == 0x2572ff1ae21fb1a7ull);
    CHECK(ip_hash("::ffff:10.1.2.3") == 0xb3d17992a3eb69bcull);
}

TEST_CASE("hash_ip is XXH3-64 of exactly the used bytes") {
    const uint8_t v4[] = {10, 1, 2, 3};
    CHECK(ip_hash("10.1.2.3") == XXH3_64bits(v4, sizeof v4));

    // Stray bytes past `size` must not matter.
    IpKey key = *parse_ip("10.1.2.3");
    key.bytes[10] = 0xAA;
    CHECK(hash_ip(key) == ip_hash("10.1.2.3"));

    // The masked key is what gets hashed.
    CHECK(hash_ip(apply_prefix(*parse_ip("10.1.2.3"), 24, 128)) == ip_hash("10.1.2.0"));
    CHECK(hash_ip(apply_prefix(*parse_ip("2001:db8::1"), 32, 64)) == ip_hash("2001:db8::"));
}

TEST_CASE("hash_point golden vectors") {
    // id                  replica  hash_point (XXH3-64 of id + replica as 4 LE bytes)
    // 10.0.0.1:80                0  3ce583956d416258
    // 10.0.0.1:80                1  b7411e12a97a8916
    // 10.0.0.1:80             4095  66bcf727d27708fd
    // web-a                      0  19e91d0002be895c
    // web-a                      7  32e706512b36424f
    // [2001:db8::1]:443          0  021a8aa68ce3563b
    CHECK(hash_point("10.0.0.1:80", 0) == 0x3ce583956d416258ull);
    CHECK(hash_point("10.0.0.1:80", 1) == 0xb7411e12a97a8916ull);
    CHECK(hash_point("10.0.0.1:80", 4095) == 0x66bcf727d27708fdull);
    CHECK(hash_point("web-a", 0) == 0x19e91d0002be895cull);
    CHECK(hash_point("web-a", 7) == 0x32e706512b36424full);
    CHECK(hash_point("[2001:db8::1]:443", 0) == 0x021a8aa68ce3563bull);
    const char input[] = {'w', 'e', 'b', '-', 'a', 7, 0, 0, 0};
    CHECK(hash_point("web-a", 7) == XXH3_64bits(input, sizeof input));
}
