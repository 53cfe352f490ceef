#include "stickyd/admin_socket_places.hpp"

#include <doctest/doctest.h>

using namespace stickyd;
using Places = std::vector<std::string>;

TEST_CASE("admin socket places: the system path first, then the user's own") {
    CHECK(admin_socket_places(1000, "/run/user/1000") == Places{"/run/stickyd/admin.sock",
                                                                "/run/user/1000/stickyd/admin.sock",
                                                                "/tmp/stickyd-1000/admin.sock"});
    CHECK(admin_socket_places(1000, "/run/user/1000///") ==
          Places{"/run/stickyd/admin.sock", "/run/user/1000/stickyd/admin.sock",
                 "/tmp/stickyd-1000/admin.sock"});
}

TEST_CASE("admin socket places: an unset, empty or relative XDG_RUNTIME_DIR is skipped") {
    const Places without{"/run/stickyd/admin.sock", "/tmp/stickyd-0/admin.sock"};
    CHECK(admin_socket_places(0, nullptr) == without);
    CHECK(admin_socket_places(0, "") == without);
    CHECK(admin_socket_places(0, "run/user/0") == without);
}

TEST_CASE("instance sockets live in the instance's runtime directory") {
    CHECK(instance_admin_socket("blue") ==
          std::optional<std::string>("/run/stickyd/blue/admin.sock"));
    CHECK(instance_admin_socket("eu-1.web_a") ==
          std::optional<std::string>("/run/stickyd/eu-1.web_a/admin.sock"));
    for (const char* bad : {"", ".", "..", "a/b", "../x", "a b", "é", "a\nb"}) {
        INFO(bad);
        CHECK_FALSE(instance_admin_socket(bad).has_value());
    }
}
