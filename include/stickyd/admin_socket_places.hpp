// Where the admin socket is when the configuration does not say: one list, read by
// stickyd to choose a place it can create and by stickyctl to find it, so the two
// always agree. Pure: the caller passes the user id and environment.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stickyd {

// The systemd unit's RuntimeDirectory=stickyd, and the configuration's default.
inline constexpr std::string_view kSystemAdminSocket = "/run/stickyd/admin.sock";

// In order of preference: the system path; then, for a user who cannot write
// /run/stickyd, $XDG_RUNTIME_DIR/stickyd/admin.sock (when it is set and absolute) and
// /tmp/stickyd-UID/admin.sock.
std::vector<std::string> admin_socket_places(uid_t uid, const char* xdg_runtime_dir);

// stickyd@NAME.service's socket (RuntimeDirectory=stickyd/NAME), or nullopt when NAME
// cannot be an instance name (empty, ".", "..", or anything but [A-Za-z0-9._-]).
std::optional<std::string> instance_admin_socket(std::string_view instance);

}  // namespace stickyd
