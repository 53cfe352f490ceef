#include "stickyd/words.hpp"

#include <doctest/doctest.h>

#include <array>
#include <string_view>

using namespace stickyd;

TEST_CASE("edit_distance counts an adjacent transposition as one edit") {
    CHECK(edit_distance("weight", "weight") == 0);
    CHECK(edit_distance("wieght", "weight") == 1);
    CHECK(edit_distance("listn", "listen") == 1);
    CHECK(edit_distance("", "abc") == 3);
}

TEST_CASE("closest_match suggests near names and fragments, and nothing far off") {
    constexpr std::array<std::string_view, 4> kFlags{"--listen", "--target", "--threads",
                                                     "--connect-timeout"};
    CHECK(closest_match("--listn", kFlags) == std::optional<std::string_view>("--listen"));
    CHECK(closest_match("--TARGET", kFlags) == std::optional<std::string_view>("--target"));
    CHECK(closest_match("timeout", kFlags) == std::optional<std::string_view>("--connect-timeout"));
    CHECK_FALSE(closest_match("--bogus", kFlags).has_value());
}

TEST_CASE("count_of agrees with its noun") {
    CHECK(count_of(0, "listener") == "0 listeners");
    CHECK(count_of(1, "listener") == "1 listener");
    CHECK(count_of(2, "target group") == "2 target groups");
    CHECK(count_of(1, "retry", "retries") == "1 retry");
    CHECK(count_of(3, "retry", "retries") == "3 retries");
}
