#include "stickyd/log.hpp"

#include <doctest/doctest.h>

using namespace stickyd;

TEST_CASE("plain lines carry a UTC millisecond timestamp and the level") {
    const auto at =
        std::chrono::system_clock::time_point{std::chrono::milliseconds(1'764'000'123'456)};
    CHECK(format_line(LogLevel::warn, "target down", at, false) ==
          "2025-11-24T16:02:03.456Z warn  target down\n");
}

TEST_CASE("journal lines carry the syslog priority and no timestamp of their own") {
    const auto at = std::chrono::system_clock::now();
    CHECK(format_line(LogLevel::error, "x", at, true) == "<3>error x\n");
    CHECK(format_line(LogLevel::warn, "x", at, true) == "<4>warn  x\n");
    CHECK(format_line(LogLevel::info, "x", at, true) == "<6>info  x\n");
    CHECK(format_line(LogLevel::debug, "x", at, true) == "<7>debug x\n");
    CHECK(format_line(LogLevel::trace, "x", at, true) == "<7>trace x\n");
}

TEST_CASE("JOURNAL_STREAM must name exactly this stderr") {
    CHECK(is_journal_stream("8:1234", 8, 1234));
    CHECK_FALSE(is_journal_stream("8:1235", 8, 1234));
    CHECK_FALSE(is_journal_stream("9:1234", 8, 1234));
    CHECK_FALSE(is_journal_stream("", 8, 1234));
    CHECK_FALSE(is_journal_stream("8", 8, 1234));
    CHECK_FALSE(is_journal_stream("8:", 8, 1234));
    CHECK_FALSE(is_journal_stream(":1234", 8, 1234));
    CHECK_FALSE(is_journal_stream("8:1234x", 8, 1234));
    CHECK_FALSE(is_journal_stream("-8:1234", 8, 1234));
    CHECK(is_journal_stream("18446744073709551615:1", UINT64_MAX, 1));
}
