// Rejections of the whole configuration (validate): references, duplicates and names,
// reached from a file and from a Config built in memory as quick mode builds one.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------
// Rejections of the whole (validate), as reached from a file.

TEST_CASE("no listeners") {
    expect_errors({
        {"",
         "t.toml: listener: no listeners; add a [[listener]] with bind and "
         "target_group"},
        {R"(
listener = []
[[target_group]]
name = "web"
)",
         "t.toml:1:12: listener: no listeners; add a [[listener]] with bind and target_group"},
    });
}

TEST_CASE("a listener must name an existing group") {
    expect_errors({
        {R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "wbe"

[[target_group]]
name = "web"

[[target_group]]
name = "api"
)",
         "t.toml:3:16: listener[0].target_group: unknown target group \"wbe\" (did you mean "
         "\"web\"?); known groups: \"web\", \"api\""},
        {R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "zzz"

[[target_group]]
name = "web"
)",
         "t.toml:3:16: listener[0].target_group: unknown target group \"zzz\"; known groups: "
         "\"web\""},
        {R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
)",
         "t.toml:3:16: listener[0].target_group: unknown target group \"web\"; no "
         "[[target_group]] is defined"},
    });
}

TEST_CASE("duplicate listeners") {
    expect_errors({
        {R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)",
         "t.toml:6:8: listener[1].bind: duplicate bind address 127.0.0.1:8000 (also "
         "listener[0] at line 1)"},
        {R"(
[[listener]]
bind = "[::1]:8000"
target_group = "web"

[[listener]]
bind = "[0:0:0::1]:8000"
target_group = "web"

[[target_group]]
name = "web"
)",
         "t.toml:6:8: listener[1].bind: duplicate bind address [::1]:8000 (also listener[0] "
         "at line 1)"},
        {R"(
[[listener]]
name = "front"
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
name = "front"
bind = "127.0.0.1:8001"
target_group = "web"

[[target_group]]
name = "web"
)",
         "t.toml:7:8: listener[1].name: duplicate listener name \"front\" (also listener[0] at "
         "line 1)"},
    });
    SUBCASE("a default name can clash with an explicit one") {
        CHECK(error_of(R"(
[[listener]]
name = "127.0.0.1:8001"
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "127.0.0.1:8001"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:6:1: listener[1].name: duplicate listener name \"127.0.0.1:8001\" (also "
       "listener[0] at line 1)");
    }
    CHECK(error_of(R"(
[[listener]]
name = ""
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:2:8: listener[0].name: must not be empty");
}

TEST_CASE("target group names") {
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group]]
name = "web"
)") == "t.toml:9:8: target_group[1].name: duplicate target group name \"web\" (also "
       "target_group[0] at line 6)");
    for (std::string_view name : {"", "web app", "web/1", "wéb"}) {
        CAPTURE(name);
        std::string text = fmt::format(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = {0:?}

[[target_group]]
name = {0:?}
)",
                                       name);
        CHECK(error_of(text) ==
              fmt::format("t.toml:6:8: target_group[0].name: must be one or more of A-Z a-z 0-9 "
                          "_ . -, got {:?}",
                          name));
    }
}

// Ids and names are printed in log lines, metrics labels, JSON and stickyctl tables,
// and typed as stickyctl arguments.
constexpr std::string_view kNameRule =
    "must be printable ASCII without spaces, quotes or backslashes";

TEST_CASE("target ids and listener names are printable ASCII without spaces") {
    // Regression: "\u0000", "\n" and other control characters were accepted, and an id
    // with a newline forged a second line in every log message that named it.
    struct Bad {
        std::string_view toml;   // as written in the file
        std::string_view shown;  // as the error shows it
    };
    const Bad bad[] = {
        {R"("\u0000")", R"("\x00")"},
        {R"("web\u0000-1")", R"("web\x00-1")"},
        {R"("web\n1")", R"("web\n1")"},
        {R"("web\r")", R"("web\r")"},
        {R"("\t")", R"("\t")"},
        {R"("\u001b[31mred")", R"("\x1b[31mred")"},
        {R"("del\u007f")", R"("del\x7f")"},
        {R"("web 1")", R"("web 1")"},
        {R"("a\"b")", R"("a\"b")"},
        {R"("a\\b")", R"("a\\b")"},
        {R"("wéb")", R"("wéb")"},
        {R"("\u00a0")", R"("\xa0")"},
    };
    for (const Bad& c : bad) {
        CAPTURE(c.toml);
        CHECK(error_of(fmt::format(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = {}
address = "127.0.0.1:9001"
)",
                                   c.toml)) ==
              fmt::format("t.toml:9:6: target_group[0].target[0].id: {}, got {}", kNameRule,
                          c.shown));
        CHECK(error_of(fmt::format(R"(
[[listener]]
name = {}
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)",
                                   c.toml)) ==
              fmt::format("t.toml:2:8: listener[0].name: {}, got {}", kNameRule, c.shown));
    }
    // What the examples and the defaults use stays valid, and so does the rest of
    // printable ASCII.
    for (std::string_view id : {"web-1", "backend_2", "node.a", "127.0.0.1:9001", "[::1]:9001",
                                "zone/a@host+1~x", "a!#$%&'()*,;<=>?^`{|}"}) {
        CAPTURE(id);
        Config c = loaded(fmt::format(R"(
[[listener]]
name = {0:?}
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = {0:?}
address = "127.0.0.1:9001"
)",
                                      id));
        CHECK(c.listeners[0].name == id);
        CHECK(c.target_groups[0].targets[0].id == id);
    }
}

TEST_CASE("validate: ids and listener names built in memory follow the same rule") {
    Config c = cli_config();
    c.target_groups[0].targets[1].id = "b\n2";
    CHECK(
        validate_error(c) ==
        fmt::format("<command line>: target_group[0].target[1].id: {}, got \"b\\n2\"", kNameRule));
    c = cli_config();
    c.listeners[0].name = std::string("l\0", 2);
    CHECK(validate_error(c) ==
          fmt::format("<command line>: listener[0].name: {}, got \"l\\x00\"", kNameRule));
}

TEST_CASE("admin_socket has no control characters") {
    // It is printed in the log when the endpoint starts.
    expect_errors({
        {R"(
[global]
admin_socket = "/tmp/admin\n.sock"
)",
         "t.toml:2:16: global.admin_socket: must not contain control characters, got "
         "\"/tmp/admin\\n.sock\""},
        {R"(
[global]
admin_socket = "/tmp/a\u0000"
)",
         "t.toml:2:16: global.admin_socket: must not contain control characters, got "
         "\"/tmp/a\\x00\""},
    });
}

TEST_CASE("duplicate targets") {
    expect_errors({
        {R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "a"
address = "127.0.0.1:9001"

[[target_group.target]]
id = "a"
address = "127.0.0.1:9002"
)",
         "t.toml:13:6: target_group[0].target[1].id: duplicate target id \"a\" (first used by "
         "target[0] at line 9)"},
        {R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "a"
address = "127.0.0.1:9001"

[[target_group.target]]
id = "b"
address = "127.0.0.1:9001"
)",
         "t.toml:14:11: target_group[0].target[1].address: duplicate address 127.0.0.1:9001 in "
         "this group (also target[0] at line 10)"},
    });
    SUBCASE("addresses are compared normalised") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
target = [{ address = "[::1]:9001" }, { address = "[0::1]:9001" }]
)") == "t.toml:7:51: target_group[0].target[1].address: duplicate address [::1]:9001 in this "
       "group (also target[0] at line 7)");
    }
    SUBCASE("a default id clashes with an explicit one") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "127.0.0.1:9002"
address = "127.0.0.1:9001"

[[target_group.target]]
address = "127.0.0.1:9002"
)") == "t.toml:12:1: target_group[0].target[1].id: duplicate target id \"127.0.0.1:9002\" "
       "(first used by target[0] at line 9)");
    }
    SUBCASE("an empty id") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = ""
address = "127.0.0.1:9001"
)") == "t.toml:9:6: target_group[0].target[0].id: must not be empty");
    }
    SUBCASE("ids and addresses are per group") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "a"

[[target_group]]
name = "a"
target = [{ id = "x", address = "127.0.0.1:9001" }]

[[target_group]]
name = "b"
target = [{ id = "x", address = "127.0.0.1:9001" }]
)") == "<loaded>");
    }
}

TEST_CASE("the first problem in the file is the one reported") {
    // Reading stops being reported at the first error; later ones do not override it.
    CHECK(error_of(R"(
[global]
threads = 999
log_level = "loud"
)") == "t.toml:2:11: global.threads: must be an integer from 0 to 256 (0 = one per online "
       "CPU), got 999");
}

// ---------------------------------------------------------------------------------
// validate() on a Config built in memory (the command-line quick mode).

TEST_CASE("validate: a valid quick-mode config") {
    CHECK(validate_error(cli_config()) == "<valid>");
    Config c = cli_config();
    c.target_groups[0].targets.clear();
    CHECK(validate_error(c) == "<valid>");  // an empty group is allowed
}

TEST_CASE("validate: errors have no position") {
    SUBCASE("duplicate address") {
        Config c = cli_config();
        c.target_groups[0].targets[1] = {"other", addr("127.0.0.1:9001"), 1};
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[1].address: duplicate "
              "address 127.0.0.1:9001 in this group (also target[0])");
    }
    SUBCASE("duplicate id") {
        Config c = cli_config();
        c.target_groups[0].targets[1].id = "127.0.0.1:9001";
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[1].id: duplicate "
              "target id \"127.0.0.1:9001\" (first used by target[0])");
    }
    SUBCASE("duplicate listen address") {
        Config c = cli_config();
        c.listeners.push_back({"x", addr("127.0.0.1:8000"), "default"});
        CHECK(validate_error(c) ==
              "<command line>: listener[1].bind: duplicate bind address "
              "127.0.0.1:8000 (also listener[0])");
    }
    SUBCASE("no listeners") {
        Config c = cli_config();
        c.listeners.clear();
        CHECK(validate_error(c) ==
              "<command line>: listener: no listeners; add a [[listener]] "
              "with bind and target_group");
    }
    SUBCASE("unset addresses") {
        Config c = cli_config();
        c.listeners[0].bind = SocketAddress{};
        CHECK(validate_error(c) ==
              "<command line>: listener[0].bind: not set; expected ip:port "
              "such as 127.0.0.1:8000 or [::]:8000");
        c = cli_config();
        c.target_groups[0].targets[0].address = SocketAddress{};
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[0].address: not set; "
              "expected ip:port such as 127.0.0.1:9001 or [::1]:9001");
    }
    SUBCASE("ranges") {
        Config c = cli_config();
        c.global.threads = 1000;
        CHECK(validate_error(c) ==
              "<command line>: global.threads: must be an integer from 0 to "
              "256 (0 = one per online CPU), got 1000");
        c = cli_config();
        c.global.shutdown_grace = 2h;
        CHECK(validate_error(c) ==
              "<command line>: global.shutdown_grace: must be a duration "
              "from 0s to 1h, got 2h");
        c = cli_config();
        c.target_groups[0].connect_timeout = 1ms;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].connect_timeout: must be a "
              "duration from 10ms to 1m, got 1ms");
        c = cli_config();
        c.target_groups[0].connect_retries = 17;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].connect_retries: must be an "
              "integer from 0 to 16, got 17");
        c = cli_config();
        c.target_groups[0].stickiness.prefix_v4 = 33;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].stickiness.prefix_v4: must be "
              "an integer from 0 to 32, got 33");
        c = cli_config();
        c.target_groups[0].stickiness.prefix_v6 = 200;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].stickiness.prefix_v6: must be "
              "an integer from 0 to 128, got 200");
        c = cli_config();
        c.target_groups[0].targets[1].weight = 0;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[1].weight: must be an "
              "integer from 1 to 100, got 0");
    }
    SUBCASE("references and names") {
        Config c = cli_config();
        c.listeners[0].target_group = "Default";
        CHECK(validate_error(c) ==
              "<command line>: listener[0].target_group: unknown target "
              "group \"Default\" (did you mean \"default\"?); known groups: "
              "\"default\"");
        c = cli_config();
        c.listeners[0].name.clear();
        CHECK(validate_error(c) == "<command line>: listener[0].name: must not be empty");
        c = cli_config();
        c.target_groups[0].targets[0].id.clear();
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[0].id: must not be "
              "empty");
        c = cli_config();
        c.target_groups.push_back(c.target_groups[0]);
        CHECK(validate_error(c) ==
              "<command line>: target_group[1].name: duplicate target group "
              "name \"default\" (also target_group[0])");
    }
    SUBCASE("the source name is the caller's") {
        Config c = cli_config();
        c.listeners.clear();
        auto error = validate(c, "flags");
        REQUIRE(error.has_value());
        CHECK(error->source == "flags");
        CHECK(error->line == 0);
        CHECK(error->column == 0);
        CHECK(error->key_path == "listener");
    }
}
