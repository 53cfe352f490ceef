// The access log line: stable logfmt a person and grep can read.
#include "datapath/access_log.hpp"

#include <doctest/doctest.h>

using namespace stickyd;
using namespace std::chrono_literals;

TEST_CASE("a relayed connection: every field, in a fixed order") {
    AccessRecord r;
    r.listener = "web";
    r.client = *SocketAddress::parse("127.0.0.2:40000");
    r.group = "app";
    r.target = "backend-1";
    r.target_address = SocketAddress::parse("127.0.0.1:9001");
    r.attempts = 2;
    r.bytes_up = 120;
    r.bytes_down = 34567;
    r.started = std::chrono::steady_clock::time_point{10s};
    CHECK(access_line(r, r.started + 12345us) ==
          "access listener=web client=127.0.0.2:40000 group=app target=backend-1 "
          "addr=127.0.0.1:9001 attempts=2 up=120 down=34567 ms=12.3 end=closed");
    r.end = "target reset";
    CHECK(access_line(r, r.started).ends_with(" ms=0.0 end=\"target reset\""));
}

TEST_CASE("never routed: missing values are '-'; a PROXY source is shown") {
    AccessRecord r;
    r.listener = "edge";
    r.client = *SocketAddress::parse("[::1]:5000");
    r.source = SocketAddress::parse("203.0.113.7:41000");
    r.end = "bad PROXY header";
    CHECK(access_line(r, r.started) ==
          "access listener=edge client=[::1]:5000 source=203.0.113.7:41000 group=- target=- "
          "addr=- attempts=0 up=0 down=0 ms=0.0 end=\"bad PROXY header\"");
}

TEST_CASE("values that could be misread are quoted and escaped") {
    AccessRecord r;
    r.listener = "a b";
    r.client = *SocketAddress::parse("127.0.0.1:1");
    r.target = "x=\"y\"";
    const std::string line = access_line(r, r.started);
    CHECK(line.starts_with("access listener=\"a b\" client=127.0.0.1:1 "));
    CHECK(line.find(" target=\"x=\\\"y\\\"\" ") != std::string::npos);
}
