#include "daemon/admin_socket_choice.hpp"

#include <fmt/format.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <vector>

#include "stickyd/admin_socket_places.hpp"
#include "stickyd/log.hpp"

namespace stickyd {
namespace {

std::string parent_of(const std::string& path) {
    return path.substr(0, path.rfind('/'));
}

// /run/stickyd is ours when it exists and we may create files in it, or when we may
// create it.
bool system_directory_usable() {
    const std::string dir = parent_of(std::string(kSystemAdminSocket));
    if (::access(dir.c_str(), F_OK) == 0) return ::access(dir.c_str(), W_OK | X_OK) == 0;
    return ::access(parent_of(dir).c_str(), W_OK | X_OK) == 0;
}

// Creates `dir` (mode 0700) when missing. Why it cannot be used, or "" when it can. In
// /tmp anyone could have made it first, to read or replace our socket: it must be a
// real directory of ours that nobody else may enter.
std::string prepare_private_directory(const std::string& dir) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        return fmt::format("cannot create it: {}", std::strerror(errno));
    }
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) return fmt::format("{}", std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) return "it is not a directory (a symbolic link?)";
    if (st.st_uid != ::geteuid()) return fmt::format("it belongs to uid {}", st.st_uid);
    if ((st.st_mode & 0077) != 0) {
        return fmt::format("its mode {:04o} lets others in", st.st_mode & 07777);
    }
    return "";
}

}  // namespace

std::string choose_admin_socket(const std::string& configured) {
    if (configured != kSystemAdminSocket || system_directory_usable()) return configured;
    const std::vector<std::string> places =
        admin_socket_places(::geteuid(), std::getenv("XDG_RUNTIME_DIR"));
    for (size_t i = 1; i < places.size(); ++i) {
        const std::string dir = parent_of(places[i]);
        const std::string problem = prepare_private_directory(dir);
        if (problem.empty()) {
            log::info("admin socket: {} is not writable by uid {}, so it goes to {}",
                      parent_of(configured), ::geteuid(), places[i]);
            return places[i];
        }
        log::warn("admin socket: not using {}: {}", dir, problem);
    }
    return configured;  // binding it will say why not
}

std::optional<gid_t> group_id(const std::string& name) {
    std::vector<char> buffer(16384);
    group entry{};
    group* found = nullptr;
    for (;;) {
        const int rc = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
        if (rc == ERANGE && buffer.size() < (1u << 20)) {
            buffer.resize(buffer.size() * 2);
            continue;
        }
        if (rc != 0 || found == nullptr) return std::nullopt;
        return found->gr_gid;
    }
}

}  // namespace stickyd
