// What toml++ must not be given is refused before it parses: nesting, size, and the
// inputs toml++ 3.3 mishandles, each as one error line.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------
// Bounds checked before the TOML parser sees the text: toml++ recurses once per
// nesting level (and again when the tree is destroyed), so 50,000 levels used to
// overflow the stack and kill the daemon.

namespace {

std::string repeat(std::string_view piece, size_t times) {
    std::string out;
    out.reserve(piece.size() * times);
    for (size_t i = 0; i < times; ++i) out += piece;
    return out;
}

constexpr std::string_view kUnknownTopLevel =
    "unknown key; expected one of \"global\", \"listener\", \"target_group\"";

// toml++ places a header's key after its bracket.
std::string unknown_top_level(unsigned line, std::string_view key, unsigned column = 1) {
    return fmt::format("t.toml:{}:{}: {}: {}", line, column, key, kUnknownTopLevel);
}

}  // namespace

TEST_CASE("nesting deeper than 32 levels is one error line, not a crash") {
    // Each key segment, header segment, array and inline table is one level. The
    // position is where the 33rd level starts.
    SUBCASE("a dotted key") {
        CHECK(error_of(repeat("a.", 50'000) + "a = 1\n") == "t.toml:1:65: nesting deeper than 32");
    }
    SUBCASE("a table header") {
        CHECK(error_of("[" + repeat("a.", 50'000) + "a]\n") ==
              "t.toml:1:66: nesting deeper than 32");
    }
    SUBCASE("an array-of-tables header") {
        CHECK(error_of("[[" + repeat("a.", 50'000) + "a]]\n") ==
              "t.toml:1:67: nesting deeper than 32");
    }
    SUBCASE("inline tables") {
        // "a = {" is five columns and two levels: the 17th key is level 33.
        CHECK(error_of(repeat("a = {", 50'000) + repeat("}", 50'000) + "\n") ==
              "t.toml:1:81: nesting deeper than 32");
    }
    SUBCASE("arrays") {
        CHECK(error_of("a = " + repeat("[", 50'000) + repeat("]", 50'000) + "\n") ==
              "t.toml:1:36: nesting deeper than 32");
    }
    SUBCASE("arrays of inline tables") {
        // "[{b = " is six columns and three levels: the 11th "{" is level 33.
        CHECK(error_of("a = " + repeat("[{b = ", 50'000) + "\n") ==
              "t.toml:1:66: nesting deeper than 32");
    }
    SUBCASE("a dotted key inside inline tables") {
        // "{b.c = " is seven columns and three levels: the 11th "b" is level 33.
        CHECK(error_of("a = " + repeat("{b.c = ", 50'000) + "\n") ==
              "t.toml:1:76: nesting deeper than 32");
    }
    SUBCASE("a header's levels count for the keys below it") {
        CHECK(error_of("[" + repeat("a.", 15) + "a]\n\nb = 1\n" + repeat("c.", 16) + "c = 1\n") ==
              "t.toml:4:33: nesting deeper than 32");
    }
    SUBCASE("a multi-line array keeps its depth across lines") {
        CHECK(error_of("a = [\n" + repeat("[\n", 40)) == "t.toml:32:1: nesting deeper than 32");
    }
    SUBCASE("columns count characters, as the TOML parser's do") {
        CHECK(error_of("\"é\"." + repeat("a.", 40) + "a = 1\n") ==
              "t.toml:1:67: nesting deeper than 32");
    }
}

TEST_CASE("32 levels are still read by the TOML parser") {
    expect_errors({
        {repeat("a.", 31) + "a = 1\n", unknown_top_level(1, "a")},
        {"[" + repeat("a.", 31) + "a]\n", unknown_top_level(1, "a", 2)},
        {"a = " + repeat("[", 31) + repeat("]", 31) + "\n", unknown_top_level(1, "a")},
        // Each comma of an inline table starts the next key at the table's own level.
        {"a = " + repeat("{b = 1, c = ", 15) + "{}" + repeat("}", 15) + "\n",
         unknown_top_level(1, "a")},
        // Each header starts again from the top.
        {"[" + repeat("a.", 31) + "a]\n[" + repeat("b.", 31) + "b]\n",
         unknown_top_level(1, "a", 2)},
        // A closed array gives its levels back to the next element.
        {"a = [" + repeat("[[[[[[[[[[]]]]]]]]]], ", 100) + "]\n", unknown_top_level(1, "a")},
    });
}

TEST_CASE("brackets and dots in strings and comments are not nesting") {
    const std::string deep = repeat("[{.", 100);
    SUBCASE("comments") {
        CHECK(error_of("# " + deep + "\nx = 1 # " + deep + "\n") == unknown_top_level(2, "x"));
    }
    SUBCASE("basic strings, with escaped quotes") {
        CHECK(error_of("x = \"\\\"" + deep + "\\\\\"\n") == unknown_top_level(1, "x"));
    }
    SUBCASE("literal strings, where a backslash escapes nothing") {
        CHECK(error_of("x = ['\\', '" + deep + "']\n") == unknown_top_level(1, "x"));
    }
    SUBCASE("multi-line basic strings, ending in quotes") {
        CHECK(error_of("x = \"\"\"\n" + deep + "\n\\\"\"\"" + deep + "\n\"\"\"\"\"\n") ==
              unknown_top_level(1, "x"));
    }
    SUBCASE("multi-line literal strings, ending in quotes") {
        CHECK(error_of("x = '''\n" + deep + "\n'' " + deep + "'''''\n") ==
              unknown_top_level(1, "x"));
    }
    SUBCASE("quoted keys") {
        CHECK(error_of("\"" + repeat("a.", 100) + "\".'" + repeat("b.", 100) + "' = 1\n") ==
              fmt::format("t.toml:1:1: {:?}: {}", repeat("a.", 100), kUnknownTopLevel));
    }
    SUBCASE("floats and times") {
        CHECK(error_of("x = [" + repeat("1.5, 07:32:00.25, ", 100) + "]\n") ==
              unknown_top_level(1, "x"));
    }
}

TEST_CASE("a table header that does not start with a key is refused before toml++ sees it") {
    // Found by fuzz_config: toml++ 3.3 calls parse_key() on whatever follows "[" or
    // "[[", asserting (and, built with NDEBUG by clang, assuming) that it starts a
    // key; "[[[a]]]" or "[&" aborted, or was undefined behaviour (toml++ #294, #301).
    const std::string_view kNoKey = "invalid TOML: expected a key after '[' in a table header";
    struct Case {
        std::string_view text;
        std::string_view position;
    };
    const Case cases[] = {
        {"[[[a]]]\n", "1:3"},
        {"[&\n", "1:2"},
        {"[[ [a]]\n", "1:4"},
        {"[#x]\n", "1:2"},
        {"[\n", "1:2"},
        {"[ =a]\n", "1:3"},
        {"[.a]\n", "1:2"},
        {"[[\u00e9]]\n", "1:3"},
        {"[global]\nthreads = 1\n\n  [[[listener]]]\n", "4:5"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        CHECK(error_of(c.text) == fmt::format("t.toml:{}: {}", c.position, kNoKey));
    }
    // Keys after spaces, quoted keys and the blank header toml++ reports itself.
    CHECK(error_of("[ \"a\" ]\n") == unknown_top_level(1, "a", 3));
    CHECK(error_of("[[ 'a' ]]\n") == unknown_top_level(1, "a", 4));
    CHECK(error_of("[ ]\n").starts_with("t.toml:1:3: invalid TOML: "));
    CHECK(error_of("[[]]\n").starts_with("t.toml:1:3: invalid TOML: "));
}

TEST_CASE("non-ASCII characters where toml++ would ask if they are whitespace") {
    // Found by fuzz_config: toml++ 3.3's is_non_ascii_horizontal_whitespace() reaches
    // TOML_UNREACHABLE for most non-ASCII characters, e.g. U+00E9 (toml++ #295, fixed
    // upstream by #305). It is asked after a bare value, around keys, and in
    // multi-line basic strings after a backslash.
    const std::string_view kOutside =
        "invalid TOML: a non-ASCII character outside a string or comment";
    const std::string_view kEscape =
        "not supported: a non-ASCII character right after a backslash or a line-ending "
        "backslash in a multi-line string; write it as a \\u escape";
    struct Case {
        std::string_view text;
        std::string_view position;
        std::string_view message;
    };
    const Case cases[] = {
        {"x = 1\u00e9\n", "1:6", kOutside},
        {"x = [1\u045e]\n", "1:7", kOutside},
        {"x = true \u00e9\n", "1:10", kOutside},
        {"\u00e9 = 1\n", "1:1", kOutside},
        {"[\"a\"\u00e9]\n", "1:5", kOutside},
        {"[a] \u00e9\n", "1:5", kOutside},
        {R"(x = """\é""")"
         "\n",
         "1:9", kEscape},
        {"x = \"\"\"a \\\n\n   \u00e9\"\"\"\n", "3:4", kEscape},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        CHECK(error_of(c.text) == fmt::format("t.toml:{}: {}", c.position, c.message));
    }
    // In strings and comments they are fine, and so is a byte order mark.
    expect_errors({
        {"x = \"\u00e9\" # \u00fc\n", unknown_top_level(1, "x")},
        {R"(x = 'é\é')"
         "\n",
         unknown_top_level(1, "x")},
        {"x = \"\"\"a \\\n   \\u00e9 \u00e9\"\"\"\n", unknown_top_level(1, "x")},
        {R"(x = '''\é''')"
         "\n",
         unknown_top_level(1, "x")},
    });
    CHECK(error_of("\xef\xbb\xbf# \u00e9\nx = = 1\n").starts_with("t.toml:2:5: invalid TOML: "));
    CHECK(error_of("\xef\xbb\xbf" + repeat("a.", 40) + "a = 1\n") ==
          "t.toml:1:65: nesting deeper than 32");
}

TEST_CASE("raw control characters and quotes inside bare text are refused before toml++") {
    // Found by fuzz_config: "x =---de'" then NULs and a non-ASCII character sent toml++
    // 3.3 past its broken value into its non-ASCII whitespace check (#305).
    expect_errors({
        {std::string("x =---de'\0\0\0\xef\xbb\xbf-------", 22),
         "t.toml:1:9: invalid TOML: a quote right after 'e', where no string can start"},
        {"x = 1'\n",
         "t.toml:1:6: invalid TOML: a quote right after '1', where no string can start"},
        {"a\"b\" = 1\n",
         "t.toml:1:2: invalid TOML: a quote right after 'a', where no string can start"},
        // Found by fuzz_config (CI, 2026-12-04): toml++ reads a bare value up to the next
        // whitespace, ',', ']', '}' or '#', quotes included, asking of each character
        // whether it is whitespace: "1." and then a string holding U+00A1 reached #305.
        {"x = 1.\"\u00a1\"\n",
         "t.toml:1:7: invalid TOML: a quote right after '.', where no string can start"},
        {"x = 1!'\u00a1'\n",
         "t.toml:1:7: invalid TOML: a quote right after '!', where no string can start"},
        {"x = [1, 2.\"\u00a1\"]\n",
         "t.toml:1:11: invalid TOML: a quote right after '.', where no string can start"},
        {"x = \"a\"\"\u00a1\"\n",
         "t.toml:1:8: invalid TOML: a quote right after '\"', where no string can start"},
        {"x = 1[\"\u00a1\"]\n",
         "t.toml:1:7: invalid TOML: a quote right after '[', where no string can start"},
        {"x = [1{'\u00a1'}]\n",
         "t.toml:1:8: invalid TOML: a quote right after '{', where no string can start"},
        {"x = +=\"\u00a1\"\n",
         "t.toml:1:7: invalid TOML: a quote right after '=', where no string can start"},
        {std::string("x = 'a\0b'\n", 10),
         "t.toml:1:7: invalid TOML: a control character (U+0000); in a string, write it as "
         "an escape"},
        {"# bell \a\nx = 1\n",
         "t.toml:1:8: invalid TOML: a control character (U+0007); in a string, write it as "
         "an escape"},
        {"x = \"\x7f\"\n",
         "t.toml:1:6: invalid TOML: a control character (U+007F); in a string, write it as "
         "an escape"},
        // Tabs, CRLF line ends, escapes and quotes where TOML has them stay fine.
        {"x\t=\t'a\tb'\r\n", unknown_top_level(1, "x")},
        {"x = \"a\\u0000\"\n", unknown_top_level(1, "x")},
        {"a.'b'.\"c\" = ''\n", unknown_top_level(1, "a")},
        {"x = ['a',\"b\",'''c''']\n", unknown_top_level(1, "x")},
        {"x = { a = \"b\", 'c' = 'd', e.\"f\" = 1 }\n", unknown_top_level(1, "x")},
        {"x = [\n  \"a\",\n\t'b']\n", unknown_top_level(1, "x")},
        {"x = [[1, \"a\"], {b = 'c'}, 2 ,'d'] # 'e\n", unknown_top_level(1, "x")},
        {"[ \"a\" . 'b' ]\nc = 1\n", unknown_top_level(1, "a", 3)},
        {"\xef\xbb\xbf'a' = 1\n", unknown_top_level(1, "a")},
    });
}

TEST_CASE("a '}' inside an array is refused before toml++ sees it") {
    // Found by fuzz_config: toml++ 3.3 parses it as an array element, asserting (and,
    // built with NDEBUG by clang, assuming) that no value starts with it.
    for (std::string_view text :
         {"a = [}]\n", "a = [[[}}]]]\n", "a = [1,}]\n", "a = [{b = [}]}]\n"}) {
        CAPTURE(text);
        CHECK(error_of(text).ends_with(": invalid TOML: '}' inside an array"));
    }
    expect_errors({
        {"a = [}]\n", "t.toml:1:6: invalid TOML: '}' inside an array"},
        {"a = [{}, {b = {}}]\n", unknown_top_level(1, "a")},
        {"a = [\"}\", '}'] # }\n", unknown_top_level(1, "a")},
    });
}

TEST_CASE("a date followed by 'T' or a space but no time is refused before toml++ sees it") {
    // Found by fuzz_config: toml++ 3.3 parses "1979-05-27Tx:" as a date-time and
    // asserts (or, built with NDEBUG by clang, assumes) that the time has a digit.
    const std::string_view kNoTime =
        "invalid TOML: a date followed by 'T' or a space needs a time (HH:MM) next";
    for (std::string_view text : {"x = 1979-05-27Ta:\n", "x = [1, 1979-05-27tb:c]\n",
                                  "x = 1979-05-27 a:b\n", "x = 1979-05-27T\n"}) {
        CAPTURE(text);
        CHECK(error_of(text).ends_with(kNoTime));
    }
    CHECK(error_of("x = [1979-05-27Taccept_proxy:1]\n") == fmt::format("t.toml:1:6: {}", kNoTime));
    // Found by fuzz_config: after "YYYY-MM-DD" and a space, toml++ reads one digit
    // and asserts (or assumes) that the time goes on after it.
    for (std::string_view text :
         {"x = [ 5, 1979-05-44 2# c\n]\n", "x = 1979-05-27 0\n", "x = [1979-05-27 1,2]\n",
          "x = {a = 1979-05-27 1}\n", "x = [1979-05-2= 1\n]\n", "x = 1_979-0a-!! 3 \n",
          "x = 1979-05-2= 1"}) {
        CAPTURE(text);
        CHECK(error_of(text).ends_with(kNoTime));
    }
    for (std::string_view text :
         {"x = 1979-05-27T07:32:00Z\n", "x = 1979-05-27 07:32:00\n",
          "x = [1979-05-27 , 1979-05-27]\n", "x = 1979-05-27 # c\n", "x = '1979-05-27Tab'\n"}) {
        CAPTURE(text);
        CHECK(error_of(text) == unknown_top_level(1, "x"));
    }
    // Broken, but safe for toml++, which reports them itself.
    for (std::string_view text : {"x = 1979-05-27T0,\n", "x = 1979-05-2= 12\n"}) {
        CAPTURE(text);
        CHECK(error_of(text).find(": invalid TOML: error while parsing ") != std::string::npos);
    }
}

TEST_CASE("toml++'s error text is one line without control characters") {
    // Found by fuzz_config: toml++ echoes what it saw verbatim, so "x = tru" and a
    // line break made the error two lines (and a log line with a forged second one).
    CHECK(error_of("x = tru\n\n") ==
          "t.toml:1:8: invalid TOML: error while parsing boolean: expected 'true', saw 'tru\\x0a'");
    // Raw control characters never reach toml++ now (the scan before it refuses
    // them), which keeps its echo of them a second line of defence.
    CHECK(error_of("x = fal\x02\n") ==
          "t.toml:1:8: invalid TOML: a control character (U+0002); in a string, write it as "
          "an escape");
}

TEST_CASE("a TOML error before the first level too deep is the one reported") {
    const std::string deep = repeat("[", 40) + "\n";
    CHECK(error_of("x = = 1\n" + deep).starts_with("t.toml:1:5: invalid TOML: "));
    CHECK(error_of("x = [1,\n2,,]\n" + deep).starts_with("t.toml:2:3: invalid TOML: "));
    CHECK(error_of("x = \"unterminated\n[[[a]]]\n").starts_with("t.toml:1:"));
    // A construct still open at the cut is not an error of its own.
    CHECK(error_of("x = [1,\n2,\n" + deep) == "t.toml:3:31: nesting deeper than 32");
    CHECK(error_of("x = \"\"\"\n" + deep + "\"\"\"\n[[[a]]]\n") ==
          "t.toml:4:3: invalid TOML: expected a key after '[' in a table header");
}

TEST_CASE("a config larger than 1 MiB is refused before it is parsed") {
    // kMinimal, padded with a comment to exactly 1 MiB, loads.
    std::string text(doc(kMinimal));
    text += "#" + std::string(1024 * 1024 - text.size() - 2, 'x') + "\n";
    REQUIRE(text.size() == 1024 * 1024);
    CHECK(error_of(text) == "<loaded>");
    text += "\n";
    CHECK(error_of(text) == "t.toml: larger than 1 MiB, the limit for a config file");
    SUBCASE("a file is not read past the limit") {
        std::string path = write_temp(text);
        auto result = load_config_file(path);
        std::remove(path.c_str());
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() == path + ": larger than 1 MiB, the limit for a config file");
    }
    SUBCASE("an endless file") {
        auto result = load_config_file("/dev/zero");
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() == "/dev/zero: larger than 1 MiB, the limit for a config file");
    }
}
