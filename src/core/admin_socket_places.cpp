#include "stickyd/admin_socket_places.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace stickyd {

std::vector<std::string> admin_socket_places(uid_t uid, const char* xdg_runtime_dir) {
    std::vector<std::string> places{std::string(kSystemAdminSocket)};
    // A relative or empty XDG_RUNTIME_DIR is invalid by the spec: ignored, as there.
    if (xdg_runtime_dir != nullptr && xdg_runtime_dir[0] == '/') {
        std::string dir = xdg_runtime_dir;
        while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
        places.push_back(dir + "/stickyd/admin.sock");
    }
    places.push_back(fmt::format("/tmp/stickyd-{}/admin.sock", uid));
    return places;
}

std::optional<std::string> instance_admin_socket(std::string_view instance) {
    const bool valid = !instance.empty() && instance != "." && instance != ".." &&
                       std::all_of(instance.begin(), instance.end(), [](char c) {
                           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
                       });
    if (!valid) return std::nullopt;
    return fmt::format("/run/stickyd/{}/admin.sock", instance);
}

}  // namespace stickyd
